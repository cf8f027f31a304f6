"""The ``hsoftmax`` command.

    hsoftmax word2vec CORPUS -o VECTORS [--cbow|--skipgram] [--dim 100] [--window 5]
                     [--min-count 5] [--sample 1e-3] [--epochs 5] [--threads N]
                     [--tree huffman|balanced|FILE] [--binary] [--checkpoint DIR [--resume]]
                     [--save-model MODEL] [--continue MODEL]
    hsoftmax evaluate VECTORS [--analogies FILE] [--similarity FILE ...]
    hsoftmax supervised train FILE -o MODEL [--dim 100] [--epochs 5] [--lr 0.1] [--word-ngrams 1]
                     [--min-count 1] [--bucket N] [--threads N] [--tree huffman|balanced|learned|FILE]
                     [--multilabel]
    hsoftmax supervised test MODEL FILE [-k 1]
    hsoftmax supervised predict MODEL FILE|- [-k 1] [--no-prob]

Bad input (a missing or empty corpus, no word reaching --min-count, an unreadable tree, vector
or checkpoint file, a flag out of range, an output that would overwrite the corpus or cannot be
written) and a failed run (training that diverged, a worker thread that failed, a full disk) end
with a one-line ``hsoftmax: error: ...`` on stderr, exit status 2, and no output file. Everything
that is not a result (progress, the corpus report, errors) goes to stderr. Subcommands are
registered in :data:`COMMANDS`, so more can be added beside these.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # the commands import these lazily, so `hsoftmax --help` stays fast
    from typing import TypeAlias

    from .supervised import Classifier
    from .tree import Tree
    from .word2vec import EncodedCorpus, Word2Vec

__all__ = ["main", "build_parser"]


class UsageError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: object, **kwargs: object) -> None:
        # No abbreviations: "--out" meaning "--output" today would break when a flag is added.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:  # argparse's own errors: keep them to one line too
        raise UsageError(message)


_STARTED = time.time()  # temporary files older than this were left by a dead run

#: word2vec.c and fastText spell their flags with one dash; argparse would read ``-output`` as
#: ``-o utput`` (a file named "utput"). Each maps to the flag meant, or to why there is none.
_FOREIGN_FLAGS = {
    "-output": "--output",
    "-train": "the corpus as the first argument",
    "-input": "the corpus as the first argument",
    "-size": "--dim",
    "-dim": "--dim",
    "-window": "--window",
    "-ws": "--window",
    "-sample": "--sample",
    "-t": "--sample",
    "-threads": "--threads",
    "-thread": "--threads",
    "-iter": "--epochs",
    "-epoch": "--epochs",
    "-epochs": "--epochs",
    "-min-count": "--min-count",
    "-minCount": "--min-count",
    "-min_count": "--min-count",
    "-alpha": "--alpha",
    "-lr": "--alpha",
    "-binary": "--binary",
    "-cbow": "--cbow (or --skipgram for -cbow 0)",
    "-skipgram": "--skipgram",
    "-hs": "nothing: hierarchical softmax is always on",
    "-negative": "nothing: this trainer has no negative sampling",
    "-neg": "nothing: this trainer has no negative sampling",
    "-seed": "--seed",
    "-checkpoint": "--checkpoint",
    "-resume": "--resume",
    "-tree": "--tree",
    "-save-model": "--save-model",
    "-continue": "--continue",
}


def _check_foreign_flags(argv: Sequence[str]) -> None:
    flags = _SUPERVISED_FOREIGN_FLAGS if argv[:1] == ["supervised"] else _FOREIGN_FLAGS
    for arg in argv:
        if arg == "--":
            return
        if arg in flags:
            meant = flags[arg]
            hint = f"did you mean {meant}?" if meant.startswith("--") else f"use {meant}"
            raise UsageError(f"unknown option {arg} (a word2vec.c/fastText flag): {hint}")


if TYPE_CHECKING:
    # What build_parser's add_subparsers returns (argparse's class is private, typeshed's generic):
    # each command's _add_* function adds its parser to it.
    _Subcommands: TypeAlias = argparse._SubParsersAction[_Parser]


def _int_in(lo: int, hi: int | Callable[[], int], why: str = "") -> Callable[[str], int]:
    """An argparse type: an integer in ``[lo, hi]`` (``hi`` may be computed when parsing)."""

    def parse(text: str) -> int:
        if len(text) > 40:  # int() of a huge digit string is slow and no bound is that large
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:20]!r}...")
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        top = hi() if callable(hi) else hi
        if not lo <= v <= top:
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {top}], got {v}" + (f": {why}" if why else ""))
        return v

    return parse


_positive_int = _int_in(1, 2**62)


def _limited(name: str) -> Callable[[str], int]:
    """The argparse type of a Word2Vec setting bounded in :data:`hsoftmax.word2vec.train.LIMITS`
    (imported when a value is parsed, so that ``--help`` stays fast)."""

    def parse(text: str) -> int:
        from .word2vec.train import LIMITS

        hi, why = LIMITS[name]
        return _int_in(0 if name == "seed" else 1, hi, why)(text)

    return parse


def _max_threads() -> int:
    from .word2vec.train import max_threads

    return max_threads()


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
    p.add_argument("-o", "--output", help="vectors file (word2vec format; .bin = binary)")
    p.add_argument(
        "--save-model",
        metavar="MODEL",
        help="also write the whole model (vocabulary, counts, both tables, tree, settings; .npz, no pickle), "
        "which --continue and Word2Vec.load read",
    )
    p.add_argument(
        "--continue",
        dest="continue_from",
        metavar="MODEL",
        help="continue training MODEL (from --save-model) on CORPUS: new words join the vocabulary, the old "
        "ones keep their tree paths and rows, a fresh learning-rate schedule; the model's settings apply "
        "(--epochs, --alpha and --threads may be given)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--cbow", dest="sg", action="store_false", help="CBOW, mean of the context (default)")
    mode.add_argument("--skipgram", dest="sg", action="store_true", help="skip-gram")
    p.add_argument(
        "--dim",
        type=_limited("dim"),
        default=None,
        help="vector size (default 100; at most 2**20, and the tables must fit in memory)",
    )
    p.add_argument(
        "--window",
        type=_limited("window"),
        default=None,
        help="max context distance (default 5; at most 10000, the longest sentence)",
    )
    p.add_argument("--min-count", type=_limited("min_count"), default=None, help="drop rarer words (default 5)")
    p.add_argument(
        "--max-vocab", type=_limited("max_vocab"), default=None, help="keep at most this many words (< 2**31)"
    )
    p.add_argument("--sample", type=_nonneg_float, default=None, help="subsampling threshold (default 1e-3, 0 = off)")
    p.add_argument(
        "--epochs",
        type=_limited("epochs"),
        default=None,
        help="passes over the corpus (default 5; at most 10**6: the schedule counts words in 64 bits)",
    )
    p.add_argument(
        "--alpha",
        type=_nonneg_float,
        default=None,
        help="initial learning rate (default 0.025; a run that diverges to NaN fails, with no output)",
    )
    p.add_argument(
        "--threads",
        type=_int_in(1, _max_threads, "more threads than 4 per core only contend for the cores"),
        default=os.cpu_count() or 1,
        help="worker threads (default: all cores; at most 4 per core)",
    )
    p.add_argument("--seed", type=_limited("seed"), default=None, help="random seed in [0, 2**64) (default 1)")
    p.add_argument(
        "--tree",
        default=None,
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
    # None: not given (the defaults below apply, or the --continue model's settings); set
    # explicitly for sg, whose default would otherwise come from --cbow's store_false
    p.set_defaults(func=_run_word2vec, sg=None)


#: The word2vec settings a model carries, with the CLI's defaults for a new model.
_MODEL_SETTINGS = {
    "dim": 100,
    "window": 5,
    "min_count": 5,
    "max_vocab": None,
    "sample": 1e-3,
    "sg": False,
    "seed": 1,
    "tree": "huffman",
}
#: Settings of a run that --continue may change.
_RUN_SETTINGS = {"epochs": 5, "alpha": 0.025}


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
    if args.output is None and args.save_model is None:
        raise UsageError("nothing to write: give -o/--output VECTORS and/or --save-model MODEL")
    if not os.path.isfile(args.corpus):
        raise UsageError(f"corpus file not found: {args.corpus}")
    for out in (args.output, args.save_model):
        if out is not None:
            _check_output(out, args.corpus)
    if args.output is not None and args.save_model is not None and _same_file(args.output, args.save_model):
        raise UsageError("-o/--output and --save-model name the same file")
    if args.continue_from is not None:
        if not os.path.isfile(args.continue_from):
            raise UsageError(f"model file not found: {args.continue_from}")
        if _same_file(args.continue_from, args.corpus):
            raise UsageError("--continue is the corpus")
    if args.tmp_dir is not None and not os.path.isdir(args.tmp_dir):
        raise UsageError(f"--tmp-dir is not a directory: {args.tmp_dir}")
    if args.checkpoint is not None:
        if os.path.exists(args.checkpoint) and not os.path.isdir(args.checkpoint):
            raise UsageError(f"--checkpoint must be a directory, {args.checkpoint} is a file")
        if _same_file(args.checkpoint, args.corpus):
            raise UsageError("--checkpoint is the corpus")
    from .word2vec import CorpusError, encode_file
    from .word2vec.runtime import start_numba_lean
    from .word2vec.train import CheckpointBusy, TrainingError

    start_numba_lean()  # this process runs only our kernels: numba needs no scipy BLAS (15 MB)

    model = _word2vec_model(args)
    update = args.continue_from is not None
    try:  # before the corpus is read: a busy or unwritable directory is known at once
        if args.checkpoint is not None:
            model.lock_checkpoint(args.checkpoint)
        corpus = encode_file(
            args.corpus, model.min_count, model.max_vocab, workdir=args.tmp_dir, vocab=model.vocab if update else None
        )
    except BaseException as e:
        model.unlock_checkpoint()
        if isinstance(e, (CorpusError, CheckpointBusy, ValueError)):  # ValueError: cannot create the directory
            raise UsageError(_one_line(e)) from None
        if isinstance(e, OSError):  # the encoded corpus's temporary files: a full or read-only disk
            raise UsageError(f"cannot write the encoded corpus: {_os_error(e)}") from None
        raise
    try:
        try:
            old_words = len(model.vocab) if update and model.vocab is not None else 0
            model.build(corpus, checkpoint=args.checkpoint, resume=args.resume, update=update)
        except (ValueError, TypeError, CheckpointBusy) as e:  # tree/vocabulary or checkpoint mismatch
            raise UsageError(_one_line(e)) from None
        if args.output is not None:
            _check_space(args.output, len(corpus.vocab), model.dim, args.binary)
        _report_corpus(corpus, model)
        if update:
            print(
                f"continuing {args.continue_from}: {old_words:,} words, {len(corpus.vocab) - old_words:,} new",
                file=sys.stderr,
            )
        try:
            model.train(corpus, checkpoint=args.checkpoint)
        except (TrainingError, ValueError) as e:
            raise UsageError(_one_line(e)) from None
        except OSError as e:  # writing a checkpoint, reading the encoded corpus
            raise UsageError(f"training stopped: {_os_error(e)}") from None
    finally:
        model.unlock_checkpoint()
        corpus.close()
    for out in (args.output, args.save_model):
        if out is None:
            continue
        try:
            if out == args.output:
                model.wv.save(out, binary=args.binary)
            else:
                model.save(out)
        except OSError as e:
            raise UsageError(f"cannot write {out}: {_os_error(e)}") from None
        what = f"{len(corpus.vocab)} vectors of dim {model.dim}" if out == args.output else "the model"
        print(f"wrote {what} to {out}", file=sys.stderr)
    return 0


def _word2vec_model(args: argparse.Namespace) -> Word2Vec:
    """A new model from the flags, or the --continue model with the flags that may change."""
    from .word2vec import Word2Vec

    # a bar only on a terminal; in a log or a pipe one line per epoch instead
    progress = (True if sys.stderr.isatty() else "log") if args.progress else False
    if args.continue_from is None:
        settings: dict[str, Any] = {
            k: d if getattr(args, k) is None else getattr(args, k) for k, d in _MODEL_SETTINGS.items()
        }
        settings["tree"] = _load_tree(settings["tree"])
        run: dict[str, Any] = {k: d if getattr(args, k) is None else getattr(args, k) for k, d in _RUN_SETTINGS.items()}
        try:
            return Word2Vec(**settings, **run, threads=args.threads, progress=progress)
        except (ValueError, TypeError) as e:
            raise UsageError(_one_line(e)) from None
    try:
        model = Word2Vec.load(args.continue_from, threads=args.threads, progress=progress)
    except ValueError as e:
        raise UsageError(_one_line(e)) from None
    config = model.config()
    for key in _MODEL_SETTINGS:
        given = getattr(args, key)
        if given is not None and given != config[key]:
            flag = "--skipgram/--cbow" if key == "sg" else "--" + key.replace("_", "-")
            raise UsageError(
                f"{flag} {given} differs from the model's {key}={config[key]!r}: a continued model keeps its "
                f"settings (drop the flag)"
            )
    for key in _RUN_SETTINGS:
        if getattr(args, key) is not None:
            setattr(model, key, getattr(args, key))
    return model


def _os_error(e: OSError) -> str:
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded"}.get(e.errno or 0)
    name = f" ({e.filename})" if e.filename else ""
    return (what or e.strerror or _one_line(e)) + name


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name the same file, after resolving ``..`` and symbolic links."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def _check_output(output: str, corpus: str) -> None:
    """Everything that would make writing ``output`` fail or destroy data, checked before training:
    it is the corpus, an existing directory, or in a directory we cannot create files in."""
    if _same_file(output, corpus):
        raise UsageError(f"the output {output} is the corpus: writing it would destroy the corpus")
    target = os.path.realpath(output)  # the writer replaces a link's target, so check that
    if os.path.isdir(target):
        raise UsageError(f"the output {output} is a directory")
    out_dir = os.path.dirname(target)
    if not os.path.isdir(out_dir):
        raise UsageError(f"output directory does not exist: {out_dir}")
    from .files import atomic_path, remove_stale_temporaries

    remove_stale_temporaries(target, before=_STARTED)  # left by a run killed while writing
    try:  # the real test of writability (os.access says yes to root on a read-only mount):
        with atomic_path(target):  # create the writer's own temporary file, then abandon it, so
            raise _Probe  # the output is untouched and a kill here leaves only what it cleans
    except _Probe:
        pass
    except OSError as e:
        raise UsageError(f"cannot write in the output directory {out_dir}: {_os_error(e)}") from None


class _Probe(Exception):
    """Ends the writability probe without replacing anything."""


def _check_space(output: str, words: int, dim: int, binary: bool | None) -> None:
    """Refuse before training an output that cannot fit on its disk (text needs ~13 bytes per value)."""
    from .word2vec.io import is_binary_name

    per_value = 4 if (is_binary_name(output) if binary is None else binary) else 13
    need = words * (dim * per_value + 32)
    try:
        st = os.statvfs(os.path.dirname(os.path.realpath(output)))
    except (OSError, AttributeError):
        return
    free = st.f_bavail * st.f_frsize
    if need > free:
        raise UsageError(
            f"the output needs about {need / 2**20:.1f} MiB but {os.path.dirname(os.path.realpath(output))} "
            f"has {free / 2**20:.1f} MiB free"
        )


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
    except (ValueError, UnicodeDecodeError, MemoryError) as e:
        raise UsageError(_one_line(e)) from None
    except OSError as e:
        raise UsageError(f"cannot read {args.vectors}: {_os_error(e)}") from None
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


# ---------------------------------------------------------------------------- supervised
#: fastText's flags for ``hsoftmax supervised``, checked instead of word2vec's (see
#: :func:`_check_foreign_flags`).
_SUPERVISED_FOREIGN_FLAGS = {
    "-input": "the training file as the first argument",
    "-output": "--output",
    "-dim": "--dim",
    "-epoch": "--epochs",
    "-lr": "--lr",
    "-wordNgrams": "--word-ngrams",
    "-minCount": "--min-count",
    "-minCountLabel": "--min-count-label",
    "-bucket": "--bucket",
    "-thread": "--threads",
    "-seed": "--seed",
    "-label": "--label-prefix",
    "-loss": "nothing: the loss is always hierarchical softmax (--multilabel for a label tree)",
}


def _add_supervised(sub: _Subcommands) -> None:
    p = sub.add_parser(
        "supervised",
        help="fastText-style text classification with hierarchical softmax",
        description="Train, test and apply a fastText-style classifier (bag of words and word "
        "n-grams, exact hierarchical softmax over a label tree) on fastText-format files: one "
        "example per line, labels as __label__NAME tokens anywhere on the line.",
    )
    cmds = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    cmds.required = True
    t = cmds.add_parser("train", help="train a classifier", description="Train a classifier on a fastText-format file.")
    t.add_argument("input", help="training file (UTF-8; .gz/.xz/.bz2 are decompressed)")
    t.add_argument("-o", "--output", required=True, help="model file to write (.npz)")
    t.add_argument("--dim", type=_int_in(1, 1 << 20), default=100, help="vector size (default 100)")
    t.add_argument("--epochs", type=_int_in(1, 1_000_000), default=5, help="passes over the file (default 5)")
    t.add_argument("--lr", type=_positive_float, default=0.1, help="initial learning rate, decays to 0 (default 0.1)")
    t.add_argument("--word-ngrams", type=_int_in(1, 64), default=1, help="max length of word n-grams (default 1)")
    t.add_argument("--min-count", type=_positive_int, default=1, help="drop rarer words (default 1)")
    t.add_argument("--min-count-label", type=_positive_int, default=1, help="drop rarer labels (default 1)")
    t.add_argument(
        "--bucket",
        type=_int_in(0, 2**31 - 2**26),
        default=None,
        help="hashed n-gram rows (default 2000000 with --word-ngrams > 1, else 0)",
    )
    t.add_argument(
        "--threads",
        type=_int_in(1, _max_threads, "more threads than 4 per core only contend for the cores"),
        default=os.cpu_count() or 1,
        help="worker threads (default: all cores)",
    )
    t.add_argument("--seed", type=_int_in(0, 2**64 - 1), default=1, help="random seed (default 1)")
    t.add_argument(
        "--tree",
        default="huffman",
        help="huffman (default, fastText's tree), balanced, learned (two passes: a tree "
        "clustered from the labels' mean hidden vectors), or a labelled tree file (Tree.save)",
    )
    t.add_argument("--multilabel", action="store_true", help="a probabilistic label tree: calibrated marginals")
    t.add_argument("--label-prefix", default="__label__", help="what starts a label token (default __label__)")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    t.set_defaults(func=_run_supervised_train)
    e = cmds.add_parser("test", help="N, P@k and R@k on a labelled file", description="Evaluate as fastText test does.")
    e.add_argument("model", help="model file written by train")
    e.add_argument("input", help="labelled fastText-format file")
    e.add_argument("-k", type=_positive_int, default=1, help="labels predicted per line (default 1)")
    e.set_defaults(func=_run_supervised_test)
    r = cmds.add_parser(
        "predict",
        help="the k most probable labels of each line",
        description="Print, per input line, its k most probable labels with their exact "
        "probabilities, best first: __label__a 0.93 __label__b 0.04",
    )
    r.add_argument("model", help="model file written by train")
    r.add_argument("input", help="text file, one example per line ('-': standard input)")
    r.add_argument("-k", type=_positive_int, default=1, help="labels per line (default 1)")
    r.add_argument("--no-prob", dest="prob", action="store_false", help="labels only (fastText predict)")
    r.set_defaults(func=_run_supervised_predict)


def _positive_float(text: str) -> float:
    v = _nonneg_float(text)
    if v == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def _run_supervised_train(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.input):
        raise UsageError(f"training file not found: {args.input}")
    _check_output(args.output, args.input)
    tree: str | Tree = args.tree
    if args.tree not in ("huffman", "balanced", "learned"):
        if not os.path.isfile(args.tree):
            raise UsageError(f"--tree must be huffman, balanced, learned or an existing tree file, got {args.tree!r}")
        tree = _load_tree(args.tree)
    from .supervised import Classifier, TrainingError

    try:
        clf = Classifier(
            dim=args.dim,
            epochs=args.epochs,
            lr=args.lr,
            word_ngrams=args.word_ngrams,
            min_count=args.min_count,
            min_count_label=args.min_count_label,
            bucket=args.bucket,
            threads=args.threads,
            tree=tree,
            seed=args.seed,
            multilabel=args.multilabel,
            label_prefix=args.label_prefix,
            progress=(True if sys.stderr.isatty() else "log") if args.progress else False,
        )
        clf.fit(args.input)
    except (ValueError, TypeError, TrainingError) as e:  # FormatError is a ValueError
        raise UsageError(_one_line(e)) from None
    except OSError as e:
        raise UsageError(f"cannot read {args.input}: {_os_error(e)}") from None
    try:
        clf.save(args.output)
    except OSError as e:
        raise UsageError(f"cannot write {args.output}: {_os_error(e)}") from None
    print(
        f"wrote {args.output}: {len(clf.labels):,} labels, {len(clf.words):,} words, tree {clf.tree}",
        file=sys.stderr,
    )
    return 0


def _load_classifier(path: str) -> Classifier:
    if not os.path.isfile(path):
        raise UsageError(f"model file not found: {path}")
    from .supervised import Classifier

    try:
        return Classifier.load(path)
    except ValueError as e:
        raise UsageError(_one_line(e)) from None


def _run_supervised_test(args: argparse.Namespace) -> int:
    clf = _load_classifier(args.model)
    if not os.path.isfile(args.input):
        raise UsageError(f"test file not found: {args.input}")
    try:
        n, precision, recall = clf.test(args.input, k=args.k)
    except ValueError as e:
        raise UsageError(_one_line(e)) from None
    except OSError as e:
        raise UsageError(f"cannot read {args.input}: {_os_error(e)}") from None
    # fastText's format: tab-separated, 3 significant digits (C++ setprecision(3))
    print(f"N\t{n}\nP@{args.k}\t{precision:.3g}\nR@{args.k}\t{recall:.3g}")
    return 0


_PREDICT_BATCH = 8192  # lines per predict() call: bounded memory on any file


def _run_supervised_predict(args: argparse.Namespace) -> int:
    clf = _load_classifier(args.model)
    if args.input != "-" and not os.path.isfile(args.input):
        raise UsageError(f"input file not found: {args.input}")
    name = "<stdin>" if args.input == "-" else args.input
    prefix = clf.label_prefix
    try:
        stream = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")  # noqa: SIM115
    except OSError as e:
        raise UsageError(f"cannot read {args.input}: {_os_error(e)}") from None
    try:
        batch: list[str] = []
        for number, raw in enumerate(stream, 1):
            line = raw.rstrip(b"\r\n")
            if b"\x00" in line or b"\x01" in line:
                raise UsageError(f"{name}, line {number}: a control byte (NUL or U+0001); this is not a text file")
            try:
                batch.append(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise UsageError(f"{name}, line {number}: not valid UTF-8 ({e.reason})") from None
            if len(batch) == _PREDICT_BATCH:
                _print_predictions(clf, batch, args, prefix)
                batch = []
        if batch:
            _print_predictions(clf, batch, args, prefix)
    except OSError as e:
        raise UsageError(f"cannot read {args.input}: {_os_error(e)}") from None
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    return 0


def _print_predictions(clf: Classifier, batch: list[str], args: argparse.Namespace, prefix: str) -> None:
    labels, probs = clf.predict(batch, k=args.k)  # every line was checked: nothing left to fail
    out = []
    for names, p in zip(labels, probs.tolist()):
        if args.prob:
            out.append(" ".join(f"{prefix}{lab} {q:.6g}" for lab, q in zip(names, p)))
        else:
            out.append(" ".join(prefix + lab for lab in names))
    sys.stdout.write("\n".join(out) + "\n")


# ---------------------------------------------------------------------------- entry point
#: name -> function adding the subcommand's parser (which sets ``func``).
COMMANDS: dict[str, Callable[[_Subcommands], None]] = {
    "word2vec": _add_word2vec,
    "evaluate": _add_evaluate,
    "supervised": _add_supervised,
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="hsoftmax", description="Hierarchical softmax tools.")
    parser.add_argument("--version", action="version", version=f"hsoftmax {__version__}")
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
        argv = list(sys.argv[1:] if argv is None else argv)
        _check_foreign_flags(argv)
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
