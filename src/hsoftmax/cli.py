"""The ``hsoftmax`` command.

    hsoftmax word2vec CORPUS -o VECTORS [--cbow|--skipgram] [--dim 100] [--window 5]
                     [--min-count 5] [--sample 1e-3] [--epochs 5] [--threads N]
                     [--tree huffman|balanced|FILE] [--binary] [--checkpoint DIR [--resume]]
    hsoftmax evaluate VECTORS [--analogies FILE] [--similarity FILE ...]

Bad input (a missing or empty corpus, no word reaching --min-count, an unreadable tree or vector
file) ends with a one-line ``hsoftmax: error: ...`` on stderr, exit status 2, and no output file.
Subcommands are registered in :data:`COMMANDS`, so more can be added beside these.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # the commands import these lazily, so `hsoftmax --help` stays fast
    from typing import TypeAlias

    from .tree import Tree
    from .word2vec import EncodedCorpus, Word2Vec

__all__ = ["main", "build_parser"]


class UsageError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own errors: keep them to one line too
        raise UsageError(message)


if TYPE_CHECKING:
    # What build_parser's add_subparsers returns (argparse's class is private, typeshed's generic):
    # each command's _add_* function adds its parser to it.
    _Subcommands: TypeAlias = argparse._SubParsersAction[_Parser]


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v >= 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


# ---------------------------------------------------------------------------- word2vec
def _add_word2vec(sub: _Subcommands) -> None:
    p = sub.add_parser(
        "word2vec",
        help="train word vectors with hierarchical softmax",
        description="Train CBOW or skip-gram word vectors with hierarchical softmax on a "
        "text corpus (one sentence per line, whitespace-separated tokens).",
    )
    p.add_argument("corpus", help="UTF-8 text file, one sentence per line")
    p.add_argument("-o", "--output", required=True, help="vectors file (word2vec format; .bin = binary)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--cbow", dest="sg", action="store_false", help="CBOW, mean of the context (default)")
    mode.add_argument("--skipgram", dest="sg", action="store_true", help="skip-gram")
    p.add_argument("--dim", type=_positive_int, default=100, help="vector size (default 100)")
    p.add_argument("--window", type=_positive_int, default=5, help="max context distance (default 5)")
    p.add_argument("--min-count", type=_positive_int, default=5, help="drop rarer words (default 5)")
    p.add_argument("--max-vocab", type=_positive_int, default=None, help="keep at most this many words")
    p.add_argument("--sample", type=_nonneg_float, default=1e-3, help="subsampling threshold (default 1e-3, 0 = off)")
    p.add_argument("--epochs", type=_positive_int, default=5, help="passes over the corpus (default 5)")
    p.add_argument("--alpha", type=_nonneg_float, default=0.025, help="initial learning rate (default 0.025)")
    p.add_argument(
        "--threads", type=_positive_int, default=os.cpu_count() or 1, help="worker threads (default: all cores)"
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument(
        "--tree",
        default="huffman",
        help="huffman (default), balanced, or a tree file saved with Tree.save over the vocabulary",
    )
    p.add_argument("--binary", action="store_true", default=None, help="write binary format whatever the name")
    p.add_argument("--checkpoint", metavar="DIR", help="save the full state here after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from the state in --checkpoint")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument(
        "--tmp-dir",
        metavar="DIR",
        default=None,
        help="where the encoded corpus (4 bytes per token, deleted at the end) is kept "
        "(default: the system's temporary directory)",
    )
    # set explicitly: otherwise the default would come from --cbow's store_false (True = skip-gram)
    p.set_defaults(func=_run_word2vec, sg=False)


def _load_tree(spec: str) -> str | Tree:
    if spec in ("huffman", "balanced"):
        return spec
    if not os.path.isfile(spec):
        raise UsageError(f"--tree must be huffman, balanced or an existing tree file, got {spec!r}")
    from .tree import Tree

    try:
        return Tree.load(spec)
    except Exception as e:  # any unreadable file is a usage error, reported in one line
        raise UsageError(f"cannot read tree file {spec}: {_one_line(e)}") from None


def _run_word2vec(args: argparse.Namespace) -> int:
    if args.resume and not args.checkpoint:
        raise UsageError("--resume needs --checkpoint DIR")
    if not os.path.isfile(args.corpus):
        raise UsageError(f"corpus file not found: {args.corpus}")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise UsageError(f"output directory does not exist: {out_dir}")
    if args.tmp_dir is not None and not os.path.isdir(args.tmp_dir):
        raise UsageError(f"--tmp-dir is not a directory: {args.tmp_dir}")
    tree = _load_tree(args.tree)

    from .word2vec import CorpusError, Word2Vec, encode_file

    model = Word2Vec(
        dim=args.dim,
        window=args.window,
        min_count=args.min_count,
        max_vocab=args.max_vocab,
        sample=args.sample,
        sg=args.sg,
        epochs=args.epochs,
        alpha=args.alpha,
        threads=args.threads,
        seed=args.seed,
        tree=tree,
        progress=args.progress,
    )
    try:
        corpus = encode_file(args.corpus, args.min_count, args.max_vocab, workdir=args.tmp_dir)
    except CorpusError as e:
        raise UsageError(str(e)) from None
    try:
        try:
            model.build(corpus, checkpoint=args.checkpoint, resume=args.resume)
        except (ValueError, TypeError) as e:  # tree/vocabulary or checkpoint mismatch
            raise UsageError(_one_line(e)) from None
        _report_corpus(corpus, model)
        model.train(corpus, checkpoint=args.checkpoint)
    finally:
        corpus.close()
    model.save(args.output, binary=args.binary)
    print(f"wrote {len(corpus.vocab)} vectors of dim {args.dim} to {args.output}", file=sys.stderr)
    return 0


def _report_corpus(corpus: EncodedCorpus, model: Word2Vec) -> None:
    print(
        f"corpus: {corpus.raw_words:,} words, {corpus.num_sentences:,} sentences, "
        f"vocabulary {len(corpus.vocab):,} words ({corpus.num_tokens:,} tokens in vocabulary); "
        f"{'skip-gram' if model.sg else 'CBOW'}, tree {model.tree}",
        file=sys.stderr,
    )
    if model.epochs_done:
        print(f"resuming after epoch {model.epochs_done} of {model.epochs}", file=sys.stderr)
    if corpus.replaced:
        print(f"warning: replaced {corpus.replaced} invalid UTF-8 byte sequence(s) with U+FFFD", file=sys.stderr)


# ---------------------------------------------------------------------------- evaluate
def _add_evaluate(sub: _Subcommands) -> None:
    p = sub.add_parser(
        "evaluate",
        help="analogy accuracy and similarity correlation of word vectors",
        description="Evaluate word2vec-format vectors. Without --analogies/--similarity, "
        "uses questions-words.txt, wordsim353.tsv and simlex999.txt from an "
        "installed gensim.",
    )
    p.add_argument("vectors", help="word2vec-format vectors (.bin = binary)")
    p.add_argument("--binary", action="store_true", default=None, help="read binary format whatever the name")
    p.add_argument("--analogies", metavar="FILE", help="questions-words format file")
    p.add_argument("--similarity", metavar="FILE", action="append", help="word-pair file (repeatable)")
    p.add_argument(
        "--restrict-vocab",
        type=_positive_int,
        default=300000,
        help="only the most frequent words count (default 300000)",
    )
    p.add_argument("--neighbours", metavar="WORD", action="append", help="also print nearest neighbours of WORD")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.vectors):
        raise UsageError(f"vectors file not found: {args.vectors}")
    from .word2vec import load_vectors
    from .word2vec.evaluate import gensim_test_file

    try:
        kv = load_vectors(args.vectors, binary=args.binary)
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(_one_line(e)) from None
    analogies = args.analogies or gensim_test_file("questions-words.txt")
    pairs = args.similarity or [p for p in (gensim_test_file("wordsim353.tsv"), gensim_test_file("simlex999.txt")) if p]
    for path in ([analogies] if analogies else []) + pairs:
        if not os.path.isfile(path):
            raise UsageError(f"evaluation file not found: {path}")
    if not analogies and not pairs and not args.neighbours:
        raise UsageError("no evaluation files: pass --analogies/--similarity or install gensim (its test data)")
    print(f"{args.vectors}: {len(kv):,} words, dim {kv.dim}")
    if analogies:
        a = kv.evaluate_analogies(analogies, args.restrict_vocab)
        print(
            f"analogies  {os.path.basename(analogies)}: accuracy {100 * a.accuracy:.2f}% "
            f"({a.correct}/{a.total}; {a.skipped} skipped, out of vocabulary)"
        )
    for path in pairs:
        s = kv.evaluate_similarity(path, args.restrict_vocab)
        print(
            f"similarity {os.path.basename(path)}: Spearman {s.spearman:.4f} "
            f"(Pearson {s.pearson:.4f}; {s.pairs} pairs, {s.skipped} skipped)"
        )
    for word in args.neighbours or []:
        if word not in kv:
            print(f"neighbours of {word}: not in the vocabulary")
            continue
        print(f"neighbours of {word}: " + ", ".join(f"{w} {s:.3f}" for w, s in kv.most_similar(word, topn=8)))
    return 0


# ---------------------------------------------------------------------------- entry point
#: name -> function adding the subcommand's parser (which sets ``func``).
COMMANDS: dict[str, Callable[[_Subcommands], None]] = {
    "word2vec": _add_word2vec,
    "evaluate": _add_evaluate,
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hsoftmax", description="Hierarchical softmax tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in COMMANDS.values():
        add(sub)
    return parser


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as e:
        print(f"hsoftmax: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hsoftmax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
