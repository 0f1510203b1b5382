"""Stage 3, augmentation: the dropout policies and the augmented copies (`dropout`), and
Figure 4's view of one text's keep probabilities (`render`)."""
