"""Sharded indexes: ``ShardedRetriever`` (one index per shard directory, merged results) and
building / searching the shards on a Ray cluster (``distributed``).

May import: every layer up to ``retriever.training``; Ray only inside ``distributed``.
"""

from retriever.cluster.shards import ShardedRetriever, is_sharded

__all__ = ["ShardedRetriever", "is_sharded"]
