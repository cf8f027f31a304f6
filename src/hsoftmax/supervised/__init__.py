"""fastText-style supervised text classification with an exact hierarchical softmax.

:class:`Classifier` reads fastText-format files (``__label__X text ...``), trains a bag of words
(and hashed word n-grams) averaged into a hidden vector, with a hierarchical softmax over any
:class:`~hsoftmax.Tree` of the labels (Huffman by default, as fastText's ``-loss hs``, a
taxonomy, or a tree learned from the data), and predicts the exact top-k labels with their exact
probabilities. The ``hsoftmax supervised`` command wraps it.
"""

from .data import FormatError
from .model import Classifier, TrainingError

__all__ = ["Classifier", "FormatError", "TrainingError"]
