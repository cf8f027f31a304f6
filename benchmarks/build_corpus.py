"""Build the word2vec corpora from Debian packages (no network beyond apt).

Two corpora, one paragraph (or verse, dictionary sense, quotation) per line, lowercased and
tokenized (``[a-z]+('[a-z]+)*`` words and digit runs):

* ``combined``: about 13.4M tokens for the benchmark: GCIDE, WordNet glosses, FOLDOC, the Jargon
  File, the Devil's Dictionary, fortunes, Jane Austen's six novels and five SWORD texts (KJV, WEB,
  and the MHCC, Scofield and Treasury of David commentaries).
* ``embedded``: the King James Bible and Jane Austen (public domain, about 1.5M tokens), written
  xz-compressed to ``src/hsoftmax/data/kjv_austen.txt.xz`` for ``make demo``.

Install the packages first (root)::

    apt-get install -y dict-gcide dict-foldoc dict-jargon dict-devil wordnet-base fortunes \\
        fortunes-min sword-text-kjv sword-text-web sword-comm-mhcc sword-comm-tdavid sword-comm-scofield
    apt-get download r-cran-janeaustenr && dpkg -x r-cran-janeaustenr_*.deb /tmp/austen

Usage::

    python benchmarks/build_corpus.py combined corpus_en.txt --austen-root /tmp/austen
    python benchmarks/build_corpus.py embedded --austen-root /tmp/austen

``--install`` runs the apt commands above first.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import html
import lzma
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from common import atomic_path

PACKAGES = [
    "dict-gcide",
    "dict-foldoc",
    "dict-jargon",
    "dict-devil",
    "wordnet-base",
    "fortunes",
    "fortunes-min",
    "sword-text-kjv",
    "sword-text-web",
    "sword-comm-mhcc",
    "sword-comm-tdavid",
    "sword-comm-scofield",
]
DICTD = "/usr/share/dictd"
WORDNET = "/usr/share/wordnet"
FORTUNES = "/usr/share/games/fortunes"
SWORD = "/usr/share/sword/modules"
AUSTEN_REL = "usr/lib/R/site-library/janeaustenr/data"
EMBEDDED = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "src", "hsoftmax", "data", "kjv_austen.txt.xz"
)

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*|[0-9]+")


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


# ------------------------------------------------------------------ dictd dictionaries
_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64_number(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + _B64[ch]
    return n


def dictd_entries(name: str) -> Iterator[str]:
    """Entry texts of a dictd database in file order (each stored entry once)."""
    with gzip.open(f"{DICTD}/{name}.dict.dz", "rb") as f:
        data = f.read()
    spans = {}
    with open(f"{DICTD}/{name}.index", encoding="utf-8", errors="replace") as f:
        for line in f:
            head, *rest = line.rstrip("\n").split("\t")
            if len(rest) < 2 or head.startswith(("00-database", "00database")):
                continue
            spans.setdefault(_b64_number(rest[0]), _b64_number(rest[1]))
    for off in sorted(spans):
        yield data[off : off + spans[off]].decode("utf-8", "replace")


_GCIDE_SOURCE = re.compile(r"\[[^\]\n]*(?:Webster|WordNet|PJC|Century|Chambers)[^\]\n]*\]")
_GCIDE_PRON = re.compile(r"\\[^\\\n]*\\")


def gcide() -> Iterator[str]:
    """Senses and quotation blocks, without source tags, pronunciations and lost-Greek '?'."""
    started = False
    for entry in dictd_entries("gcide"):
        started = started or entry.startswith("A \\A\\")  # the license/header entries come first
        if not started:
            continue
        text = _GCIDE_PRON.sub(" ", _GCIDE_SOURCE.sub(" ", entry))
        text = text.replace("{", "").replace("}", "").replace("?", " ")
        yield from re.split(r"\n\s*\n", text)


def dictd_plain(name: str) -> Callable[[], Iterator[str]]:
    def read() -> Iterator[str]:
        for entry in dictd_entries(name):
            yield entry.replace("{", "").replace("}", "")

    return read


# ------------------------------------------------------------------ WordNet glosses
def wordnet_glosses() -> Iterator[str]:
    """Each synset's definition and its quoted examples."""
    for pos in ("noun", "verb", "adj", "adv"):
        with open(os.path.join(WORDNET, f"data.{pos}"), encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):  # the license header
                    continue
                gloss = line.partition(" | ")[2].strip()
                yield re.split(r';\s*"', gloss, maxsplit=1)[0]
                yield from re.findall(r'"([^"]*)"', gloss)


# ------------------------------------------------------------------ fortunes
def fortunes() -> Iterator[str]:
    for name in sorted(os.listdir(FORTUNES)):
        path = os.path.join(FORTUNES, name)
        if name.endswith((".dat", ".u8")) or os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from f.read().split("\n%\n")


# ------------------------------------------------------------------ Jane Austen (R data, no R)
def _r_strings(buf: bytes) -> list[str]:
    """A serialized R character vector (XDR format 2 or 3) -> its strings."""
    if buf[:2] != b"X\n":
        return []
    pos = 2
    version = struct.unpack_from(">i", buf, pos)[0]
    pos += 12  # version, writer R version, minimal reader version
    if version == 3:
        n = struct.unpack_from(">i", buf, pos)[0]
        pos += 4 + n  # native encoding name
    flags, length = struct.unpack_from(">ii", buf, pos)
    pos += 8
    if flags & 0xFF != 16:  # not a STRSXP
        return []
    out = []
    for _ in range(length):
        _, n = struct.unpack_from(">ii", buf, pos)
        pos += 8
        if n >= 0:
            out.append(buf[pos : pos + n].decode("utf-8", "replace"))
            pos += n
        else:
            out.append("")  # NA
    return out


def austen(root: str) -> Callable[[], Iterator[str]]:
    """Paragraphs of the six novels: an R lazy-load database is a run of
    [4-byte length][zlib stream] records, each one serialized character vector (one line each)."""

    def read() -> Iterator[str]:
        path = os.path.join(root, AUSTEN_REL, "Rdata.rdb")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} (apt-get download r-cran-janeaustenr && dpkg -x ... {root})")
        with open(path, "rb") as f:
            rdb = f.read()
        pos = 0
        while pos < len(rdb):
            dec = zlib.decompressobj()
            lines = _r_strings(dec.decompress(rdb[pos + 4 :]))
            pos = len(rdb) - len(dec.unused_data)
            para: list[str] = []
            for line in [*lines, ""]:
                if line:
                    para.append(line)
                elif para:
                    yield " ".join(para)
                    para = []

    return read


# ------------------------------------------------------------------ SWORD Bible modules
# module: (directory, index prefix letter, bytes of the size field in the verse index)
SWORD_MODULES = {
    "kjv": ("texts/ztext/engKJV2006eb", "b", 2),
    "web": ("texts/ztext/engWEB2015eb", "b", 2),
    "mhcc": ("comments/zcom/mhcc", "b", 2),
    "scofield": ("comments/zcom/scofield", "b", 2),
    "tdavid": ("comments/zcom/tdavid", "c", 4),
}
_NOTE = re.compile(r"<note\b[^>]*>.*?</note>", re.S)
_TAG = re.compile(r"<[^>]*>")


def sword(module: str) -> Callable[[], Iterator[str]]:
    """Verses (or comments) of a zText/zCom module as plain text. Files per testament:
    ``?zs`` block index (offset, compressed size, size), ``?zv`` entry index (block, offset,
    size), ``?zz`` zlib blocks. Commentaries point many verses at one comment: each is kept once."""
    rel, letter, size_bytes = SWORD_MODULES[module]

    def read() -> Iterator[str]:
        base_dir = os.path.join(SWORD, rel)
        if not os.path.isdir(base_dir):
            raise FileNotFoundError(base_dir)
        rec = 8 + size_bytes
        fmt = "<IIH" if size_bytes == 2 else "<III"
        for testament in ("ot", "nt"):
            base = os.path.join(base_dir, f"{testament}.{letter}z")
            if not os.path.exists(base + "s") or os.path.getsize(base + "s") == 0:
                continue
            bzs, bzv, bzz = (Path(base + ext).read_bytes() for ext in "svz")
            blocks: dict[int, bytes] = {}
            seen = set()
            for k in range(len(bzv) // rec):
                entry = struct.unpack_from(fmt, bzv, k * rec)
                if entry[2] == 0 or entry in seen:
                    continue
                seen.add(entry)
                b, off, size = entry
                if b not in blocks:
                    coff, csize, _ = struct.unpack_from("<III", bzs, b * 12)
                    blocks[b] = zlib.decompress(bzz[coff : coff + csize])
                raw = blocks[b][off : off + size].decode("utf-8", "replace")
                yield html.unescape(_TAG.sub(" ", _NOTE.sub(" ", raw)))

    return read


# ------------------------------------------------------------------ assembling
def combined_sources(austen_root: str) -> dict[str, Callable[[], Iterator[str]]]:
    return {
        "gcide": gcide,
        "wordnet_glosses": wordnet_glosses,
        "foldoc": dictd_plain("foldoc"),
        "jargon": dictd_plain("jargon"),
        "devil": dictd_plain("devil"),
        "fortunes": fortunes,
        "austen": austen(austen_root),
        **{f"sword_{m}": sword(m) for m in SWORD_MODULES},
    }


def embedded_sources(austen_root: str) -> dict[str, Callable[[], Iterator[str]]]:
    return {"sword_kjv": sword("kjv"), "austen": austen(austen_root)}


def write_corpus(sources: dict[str, Callable[[], Iterator[str]]], out, strict: bool) -> int:
    total = 0
    for name, read in sources.items():
        n = 0
        try:
            for text in read():
                toks = tokenize(text)
                if toks:
                    out.write(" ".join(toks) + "\n")
                    n += len(toks)
        except FileNotFoundError as e:
            if strict:
                raise SystemExit(
                    f"build_corpus: missing source {name}: {e} (install the packages, see --help)"
                ) from None
            print(f"build_corpus: skipping {name}: {e}", file=sys.stderr)
        print(f"  {name:18s} {n:>10,d} tokens", file=sys.stderr)
        total += n
    return total


def install(austen_root: str) -> None:
    subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], check=True)
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["apt-get", "download", "r-cran-janeaustenr"], check=True, cwd=d)
        for deb in glob.glob(os.path.join(d, "*.deb")):
            subprocess.run(["dpkg", "-x", deb, austen_root], check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("which", choices=["combined", "embedded"])
    p.add_argument("output", nargs="?", help="output path (default: corpus_en.txt, or the embedded .xz)")
    p.add_argument("--austen-root", default="/", help="where r-cran-janeaustenr was unpacked (dpkg -x)")
    p.add_argument("--install", action="store_true", help="apt-get install the packages first")
    p.add_argument("--allow-missing", action="store_true", help="skip sources that are not installed")
    args = p.parse_args(argv)
    if args.install:
        install(args.austen_root)
    if args.which == "combined":
        out_path = args.output or "corpus_en.txt"
        sources = combined_sources(args.austen_root)
    else:
        out_path = args.output or EMBEDDED
        sources = embedded_sources(args.austen_root)
    opener = lzma.open if out_path.endswith(".xz") else open
    # preset 9e: the embedded file is committed, so spend time to make it small
    kwargs = {"preset": 9 | lzma.PRESET_EXTREME} if opener is lzma.open else {}
    # Atomic: an interrupted or failed build leaves the previous corpus (or none), never half of one.
    with atomic_path(out_path) as tmp, opener(tmp, "wt", encoding="utf-8", **kwargs) as out:
        total = write_corpus(sources, out, strict=not args.allow_missing)
    print(f"wrote {total:,} tokens to {out_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
