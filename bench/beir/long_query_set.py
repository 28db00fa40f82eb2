"""A labelled long-query tuning set from two public dictionaries (GCIDE -> WordNet), BEIR layout.

The long-query levers (``long_queries``, query windows, query-token weights, fusion weights by query
length; ``bench/beir/long_query_levers.py``) need queries of whole paragraphs with relevance labels, and the
BEIR collections with such queries (ArguAna, ...) are held out. This builds one from the two Debian
dictionary packages of ``bench/scale/realtext.py`` (same pinned ``.deb`` files and sha256, same parsers:
``bench/common.py``):

* **query** = every GCIDE definition block of one headword, joined (pronunciation ``\\...\\``,
  bracketed etymologies / source tags ``[...]`` and the markup braces removed), with the headword
  and its inflected forms (``-s -es -ed -d -ing -er -ers -ly -ness``, ``y -> ies/ied``) deleted, so a
  query never names its answer; kept when it is 64-400 word-piece tokens for the default encoder
  (``[CLS]``/``[SEP]`` included);
* **relevant** (score 1) = the WordNet 3.0 senses of that headword (1-10 distinct senses);
* **corpus** = WordNet senses, deduplicated by text (a synset's gloss is listed under each of its
  words with the same text, so one document per synset), no title: every relevant sense of the
  chosen queries, plus a seeded sample of the other senses up to ``--n-docs``.

Queries are a seeded sample of the eligible headwords, split by a second seeded shuffle into a
*tune* half (choose defaults) and a *check* half (report them). Files go to
``index_data/longq/set/``: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/tune.tsv``,
``qrels/check.tsv``, ``stats.json``.

    .venv/bin/python bench/beir/long_query_set.py [--n-queries 600] [--n-docs 15000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import ROOT, WN_SENSE, clean_text, dictionary_entries, fetch_dictionaries  # noqa: E402

log = logging.getLogger("bench.long_query_set")
DATA = ROOT / "index_data" / "longq"
OUT = DATA / "set"
MIN_TOKENS, MAX_TOKENS = 64, 400
MAX_SENSES = 10
_HEADWORD = re.compile(r"^[a-z][a-z '-]*[a-z]$")


def _gcide_text(block: str) -> str:
    """A GCIDE block without its pronunciation, bracketed notes and markup."""
    text = re.sub(r"\\[^\\\n]*\\", " ", block)  # \Am"ple*ness\ pronunciations
    for _ in range(3):  # [...] etymologies and source tags, nested ones too
        text = re.sub(r"\[[^\[\]]*\]", " ", text)
    return clean_text(text)


def _headword_pattern(h: str) -> re.Pattern:
    stems = {re.escape(h).replace(r"\ ", r"\s+")}
    if h.endswith("y"):
        stems.add(re.escape(h[:-1]) + "(?:ies|ied)")
    if h.endswith("e"):
        stems.add(re.escape(h[:-1]) + "ing")
    alt = "|".join(sorted(stems, key=len, reverse=True))
    return re.compile(rf"\b(?:{alt})(?:s|es|ed|d|ing|er|ers|ly|ness)?\b", re.IGNORECASE)


def strip_headword(text: str, h: str) -> str:
    return re.sub(r"\s+", " ", _headword_pattern(h).sub(" ", text)).strip()


def wordnet_senses(dictd: Path) -> dict[str, list[str]]:
    """headword (lower case) -> its WordNet sense texts, as ``bench/scale/realtext.py`` splits them."""
    out: dict[str, list[str]] = defaultdict(list)
    for word, text in dictionary_entries(dictd, "wn"):
        body = text.split("\n", 1)[1] if "\n" in text else text
        senses = [s for s in WN_SENSE.split("\n" + body) if s.strip()] or [body]
        for s in senses:
            if len(s.split()) >= 3:
                t = clean_text(s)
                if t not in out[word.lower()]:
                    out[word.lower()].append(t)
    return out


def gcide_blocks(dictd: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for word, text in dictionary_entries(dictd, "gcide"):
        body = text.split("\n", 1)[1] if "\n" in text else text
        first = text.split("\n", 1)[0]
        t = _gcide_text(first + " " + body if "\\" in first else body)
        if len(t.split()) >= 3 and t not in out[word.lower()]:
            out[word.lower()].append(t)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-queries", type=int, default=600)
    ap.add_argument("--n-docs", type=int, default=15000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from retriever.encoder import ColBERTEncoder

    enc = ColBERTEncoder.from_pretrained("default")  # its tokenizer measures query lengths
    if enc.config.long_queries != "extend" or enc.config.document_length < MAX_TOKENS:
        raise SystemExit("this script measures lengths with long_queries='extend' (up to document_length)")
    dictd = fetch_dictionaries(DATA / "debs")
    wn, gc = wordnet_senses(dictd), gcide_blocks(dictd)
    heads = sorted(h for h in gc if h in wn and _HEADWORD.match(h) and len(h) >= 3 and 1 <= len(wn[h]) <= MAX_SENSES)
    texts = [strip_headword(" ".join(gc[h]), h) for h in heads]
    lengths = np.array([len(x) for x in enc.tokenize(texts, is_query=True)])
    ok = [i for i in range(len(heads)) if MIN_TOKENS <= lengths[i] <= MAX_TOKENS]
    log.info("%d headwords in both dictionaries with 1-%d senses; %d with queries of %d-%d tokens",
             len(heads), MAX_SENSES, len(ok), MIN_TOKENS, MAX_TOKENS)
    rng = random.Random(args.seed)
    chosen = sorted(rng.sample(ok, min(args.n_queries, len(ok))))
    # documents: one per distinct sense text, in a fixed (sorted) order before sampling
    all_texts = sorted({t for senses in wn.values() for t in senses})
    doc_id = {t: f"d{i}" for i, t in enumerate(all_texts)}
    relevant = {f"q{i}": [doc_id[t] for t in wn[heads[i]]] for i in chosen}
    keep = {d for ds in relevant.values() for d in ds}
    others = [t for t in all_texts if doc_id[t] not in keep]
    fill = rng.sample(others, max(0, args.n_docs - len(keep)))
    corpus = sorted(keep | {doc_id[t] for t in fill}, key=lambda d: int(d[1:]))
    text_of = {v: k for k, v in doc_id.items()}
    qids = [f"q{i}" for i in chosen]
    order = qids[:]
    random.Random(args.seed + 1).shuffle(order)
    half = {"tune": sorted(order[: len(order) // 2], key=lambda q: int(q[1:])),
            "check": sorted(order[len(order) // 2:], key=lambda q: int(q[1:]))}
    (OUT / "qrels").mkdir(parents=True, exist_ok=True)
    with open(OUT / "corpus.jsonl", "w") as fh:
        for d in corpus:
            fh.write(json.dumps({"_id": d, "title": "", "text": text_of[d]}) + "\n")
    with open(OUT / "queries.jsonl", "w") as fh:
        for i in chosen:
            fh.write(json.dumps({"_id": f"q{i}", "text": texts[i], "metadata": {"headword": heads[i]}}) + "\n")
    for split, qs in half.items():
        with open(OUT / "qrels" / f"{split}.tsv", "w") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for q in qs:
                for d in relevant[q]:
                    fh.write(f"{q}\t{d}\t1\n")
    ql = lengths[chosen]
    dl = np.array([len(x) for x in enc.tokenize([text_of[d] for d in corpus], is_query=False)])
    stats = {"n_docs": len(corpus), "n_relevant_docs": len(keep), "n_queries": len(chosen),
             "n_tune": len(half["tune"]), "n_check": len(half["check"]), "eligible_headwords": len(ok),
             "relevant_per_query_mean": round(float(np.mean([len(v) for v in relevant.values()])), 2),
             "query_tokens_quantiles": {str(p): int(np.percentile(ql, p)) for p in (0, 10, 25, 50, 75, 90, 100)},
             "query_tokens_mean": round(float(ql.mean()), 1),
             "doc_tokens_mean": round(float(dl.mean()), 1), "doc_tokens_total": int(dl.sum()),
             "seed": args.seed}
    (OUT / "stats.json").write_text(json.dumps(stats, indent=1))
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
