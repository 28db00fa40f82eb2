import sys

from retriever.cli.main import main

sys.exit(main())
