"""BM25 over words, for hybrid scoring: a tokenizer, an inverted index in plain arrays, scoring.

The index is term-major CSR over the index's document rows (row i = document row i of the
``Retriever``)::

    vocab          list of terms; term id = position
    term_offsets   (n_terms + 1,) int64: postings of term t are [term_offsets[t], term_offsets[t + 1])
    post_rows      (n_postings,) uint32 document rows, ascending within each term
    post_tf        (n_postings,) uint32 term frequencies
    doc_len        (n_rows,) uint32 terms per document (after stop-word removal)

Scoring is Lucene's BM25 (the variant ``bm25s`` calls ``"lucene"`` and Pyserini / BEIR use):
``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))`` and
``score(q, d) = sum over query terms t of idf(t) * tf / (tf + k1 * (1 - b + b * len(d) / avgdl))``,
a query term that occurs twice counting twice. ``N``, ``df`` and ``avgdl`` count every row, deleted
ones included until ``compact`` (as Lucene does until segments merge); deleted rows are never
returned. Every object is immutable: :meth:`LexicalIndex.extend` and :meth:`LexicalIndex.select`
return new ones, so a failed ``add`` or ``compact`` leaves the old index untouched.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from retriever.core.configs import check_keys

__all__ = ["BM25Config", "LexicalIndex", "Analyzer", "ENGLISH_STOPWORDS"]

#: Lucene's English stop set (``EnglishAnalyzer.ENGLISH_STOP_WORDS_SET``), the analyzer behind the
#: BM25 baselines of BEIR (Pyserini).
ENGLISH_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with".split()
)
_MAX_ROWS = (1 << 32) - 1
_TOKEN = re.compile(r"\w\w+", re.UNICODE)  # words of two or more word characters


@dataclass(frozen=True)
class BM25Config:
    """How text becomes terms, and the BM25 parameters (persisted in the manifest).

    Parameters
    ----------
    k1, b : float
        BM25 term-frequency saturation and length normalisation (``bm25s`` defaults).
    stopwords : "english" or "none"
        Drop Lucene's 33 English stop words.
    stemmer : "english" or "none"
        Snowball English stemmer (PyStemmer, the ``Stemmer`` module) on every term.
    """

    k1: float = 1.5
    b: float = 0.75
    stopwords: str = "english"
    stemmer: str = "english"

    def __post_init__(self) -> None:
        for name in ("k1", "b"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise ValueError(f"BM25Config.{name} must be a finite number >= 0, got {v!r}")
        if self.b > 1:
            raise ValueError(f"BM25Config.b must be in [0, 1], got {self.b!r}")
        if self.stopwords not in ("english", "none"):
            raise ValueError(f"BM25Config.stopwords must be 'english' or 'none', got {self.stopwords!r}")
        if self.stemmer not in ("english", "none"):
            raise ValueError(f"BM25Config.stemmer must be 'english' or 'none', got {self.stemmer!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BM25Config":
        check_keys(cls, d)
        return cls(**d)


class Analyzer:
    """Text -> terms: lower-case, words of >= 2 word characters, stop words out, stemmed."""

    def __init__(self, config: BM25Config) -> None:
        self.config = config
        self._stop = ENGLISH_STOPWORDS if config.stopwords == "english" else frozenset()
        self._stem = None
        if config.stemmer == "english":
            try:
                import Stemmer
            except ImportError:
                raise ImportError("BM25Config.stemmer='english' needs PyStemmer (pip install PyStemmer), "
                                  "or use stemmer='none'") from None
            self._stem = Stemmer.Stemmer("english").stemWords

    def terms(self, text: str) -> list[str]:
        words = [w for w in _TOKEN.findall(text.lower()) if w not in self._stop]
        return self._stem(words) if self._stem is not None and words else words


class LexicalAppender:
    """Analyses batches of new texts (rows after ``base``'s) and merges them into a new index once.

    Streaming builds add texts batch by batch; merging each batch into the postings would copy
    them every time, so the new postings are collected and merged in :meth:`finish`.
    """

    def __init__(self, base: "LexicalIndex") -> None:
        self.base = base
        self.vocab = list(base.vocab)
        self.term_id = dict(base._term_id)
        self.terms: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.tfs: list[np.ndarray] = []
        self.lens: list[np.ndarray] = []
        self.n_new = 0

    def _tid(self, w: str) -> int:
        i = self.term_id.get(w)
        if i is None:
            i = self.term_id[w] = len(self.vocab)
            self.vocab.append(w)
        return i

    def add(self, texts: Sequence[str]) -> None:
        if self.base.n_rows + self.n_new + len(texts) > _MAX_ROWS:
            raise ValueError(f"a BM25 index holds at most {_MAX_ROWS} documents (uint32 rows); shard the corpus")
        analyzer = self.base.analyzer
        doc_len = np.empty(len(texts), dtype=np.uint32)
        row0 = self.base.n_rows + self.n_new
        for j, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {j} is a {type(text).__name__}, not str")
            words = analyzer.terms(text)
            doc_len[j] = len(words)
            if not words:
                continue
            ids = np.fromiter((self._tid(w) for w in words), dtype=np.int64, count=len(words))
            uniq, counts = np.unique(ids, return_counts=True)
            self.terms.append(uniq)
            self.rows.append(np.full(uniq.size, row0 + j, dtype=np.uint32))
            self.tfs.append(counts.astype(np.uint32))
        self.lens.append(doc_len)
        self.n_new += len(texts)

    def finish(self) -> "LexicalIndex":
        """The base index with every added text appended (the base is unchanged)."""
        base = self.base
        new_terms = np.concatenate(self.terms) if self.terms else np.zeros(0, dtype=np.int64)
        new_rows = np.concatenate(self.rows) if self.rows else np.zeros(0, dtype=np.uint32)
        new_tf = np.concatenate(self.tfs) if self.tfs else np.zeros(0, dtype=np.uint32)
        order = np.argsort(new_terms, kind="stable")  # by term, rows ascending within a term
        new_terms, new_rows, new_tf = new_terms[order], new_rows[order], new_tf[order]
        n_terms = len(self.vocab)
        old_off = np.concatenate([base.term_offsets,
                                  np.full(n_terms - base.n_terms, base.term_offsets[-1], dtype=np.int64)])
        # each new posting goes at the end of its term's old list (new rows follow old ones)
        at = old_off[new_terms + 1]
        post_rows = np.insert(base.post_rows, at, new_rows)
        post_tf = np.insert(base.post_tf, at, new_tf)
        term_offsets = old_off.copy()
        term_offsets[1:] += np.cumsum(np.bincount(new_terms, minlength=n_terms).astype(np.int64))
        doc_len = np.concatenate([base.doc_len, *self.lens]).astype(np.uint32)
        return LexicalIndex(base.config, list(self.vocab), term_offsets, post_rows, post_tf, doc_len)


class LexicalIndex:
    """An immutable BM25 inverted index over document rows (see the module docstring)."""

    def __init__(self, config: BM25Config, vocab: list[str], term_offsets: np.ndarray, post_rows: np.ndarray,
                 post_tf: np.ndarray, doc_len: np.ndarray) -> None:
        self.config = config
        self.vocab = vocab
        self.term_offsets = term_offsets
        self.post_rows = post_rows
        self.post_tf = post_tf
        self.doc_len = doc_len
        self.analyzer = Analyzer(config)
        self._term_id = {t: i for i, t in enumerate(vocab)}
        n = doc_len.size
        avgdl = float(doc_len.mean()) if n else 0.0
        df = np.diff(term_offsets).astype(np.float64)
        self.idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
        # per-row denominator term k1 * (1 - b + b * len / avgdl)
        norm = config.k1 * (1.0 - config.b + config.b * doc_len / max(avgdl, 1e-9))
        self._norm = norm.astype(np.float32)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def empty(cls, config: BM25Config) -> "LexicalIndex":
        return cls(config, [], np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.uint32),
                   np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.uint32))

    @classmethod
    def from_texts(cls, texts: Sequence[str], config: BM25Config | None = None) -> "LexicalIndex":
        return cls.empty(config or BM25Config()).extend(texts)

    @property
    def n_rows(self) -> int:
        return int(self.doc_len.size)

    @property
    def n_terms(self) -> int:
        return len(self.vocab)

    def extend(self, texts: Sequence[str]) -> "LexicalIndex":
        """A new index with ``texts`` appended as rows ``n_rows, n_rows + 1, ...``."""
        app = LexicalAppender(self)
        app.add(texts)
        return app.finish()

    def select(self, rows: np.ndarray) -> "LexicalIndex":
        """A new index of rows ``rows`` (sorted, unique), renumbered 0..len(rows)-1 (compaction)."""
        rows = np.asarray(rows, dtype=np.int64)
        new_of = np.full(self.n_rows, -1, dtype=np.int64)
        new_of[rows] = np.arange(rows.size)
        mapped = new_of[self.post_rows]
        keep = mapped >= 0
        term_of = np.repeat(np.arange(self.n_terms, dtype=np.int64), np.diff(self.term_offsets))
        counts = np.bincount(term_of[keep], minlength=self.n_terms)
        term_offsets = np.zeros(self.n_terms + 1, dtype=np.int64)
        np.cumsum(counts, out=term_offsets[1:])
        return LexicalIndex(self.config, list(self.vocab), term_offsets, mapped[keep].astype(np.uint32), self.post_tf[keep],
                            self.doc_len[rows])

    # -- scoring ---------------------------------------------------------------------------
    def query_terms(self, text: str) -> np.ndarray:
        """Term ids of a query's terms that occur in the index (repeats kept)."""
        ids = [self._term_id.get(w) for w in self.analyzer.terms(text)]
        return np.array([i for i in ids if i is not None], dtype=np.int64)

    def scores(self, text: str) -> np.ndarray:
        """BM25 score of every row for query ``text``: float32 (n_rows,), 0 where no term matches."""
        out = np.zeros(self.n_rows, dtype=np.float64)
        for t in self.query_terms(text):
            a, b = int(self.term_offsets[t]), int(self.term_offsets[t + 1])
            rows = self.post_rows[a:b]
            tf = self.post_tf[a:b].astype(np.float32)
            out[rows] += self.idf[t] * tf / (tf + self._norm[rows])
        return out.astype(np.float32)

    def query(self, text: str, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One query: (its top-``k`` rows by BM25, at most ``k``, only positive scores, best first, ties
        by row; the float32 score of every row). ``allowed``: uint8 (n_rows,) mask or None."""
        s = self.scores(text)
        hit = np.flatnonzero(s > 0)
        if allowed is not None:
            hit = hit[allowed[hit] != 0]
        if hit.size > k:  # the k best, ties at the cut broken by row (hit ascends)
            sv = s[hit]
            kth = np.partition(sv, sv.size - k)[sv.size - k]
            above, tied = hit[sv > kth], hit[sv == kth]
            hit = np.concatenate([above, tied[: k - above.size]])
        return hit[np.lexsort((hit, -s[hit]))], s

    def search(self, texts: Sequence[str], k: int, allowed: np.ndarray | None = None):
        """Top-``k`` rows per query by BM25 (only rows with a positive score; ``allowed``: uint8 mask).

        Returns (rows int64 (n_q, k), scores float32 (n_q, k)), padded with -1 / -inf.
        """
        rows = np.full((len(texts), k), -1, dtype=np.int64)
        top = np.full((len(texts), k), -np.inf, dtype=np.float32)
        for i, text in enumerate(texts):
            hit, s = self.query(text, k, allowed)
            rows[i, : hit.size] = hit
            top[i, : hit.size] = s[hit]
        return rows, top

    # -- persistence -------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        return {"term_offsets": self.term_offsets, "post_rows": self.post_rows, "post_tf": self.post_tf,
                "doc_len": self.doc_len}

    def check(self, n_rows: int) -> None:
        """``ValueError`` naming the first inconsistency with an index of ``n_rows`` document rows."""
        off, pr, tf = self.term_offsets, self.post_rows, self.post_tf
        if off.size != self.n_terms + 1 or off[0] != 0 or np.any(np.diff(off) < 0) or off[-1] != pr.size:
            raise ValueError(f"term_offsets is not a CSR offset array for {self.n_terms} terms and {pr.size} postings")
        if tf.size != pr.size:
            raise ValueError(f"post_tf has {tf.size} entries, post_rows {pr.size}")
        if self.doc_len.size != n_rows:
            raise ValueError(f"doc_len has {self.doc_len.size} rows, the index {n_rows}")
        if pr.size and (pr.min() < 0 or pr.max() >= n_rows):
            raise ValueError(f"post_rows names rows outside [0, {n_rows})")
        if pr.size > 1:
            step = np.diff(pr.astype(np.int64)) > 0
            starts = off[1:-1]
            step[starts[(starts > 0) & (starts < pr.size)] - 1] = True  # a new term may start anywhere
            if not step.all():
                raise ValueError("post_rows must ascend strictly within each term's postings")
        if tf.size and tf.min() < 1:
            raise ValueError("post_tf holds a zero term frequency")
        if len(set(self.vocab)) != len(self.vocab) or not all(self.vocab):
            raise ValueError("the vocabulary has empty or repeated terms")
