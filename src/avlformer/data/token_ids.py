"""bert-base-uncased reserved token ids: the model needs these, but not the tokenizer (nor ``transformers``)."""

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 100, 101, 102, 103
RESERVED_IDS = frozenset({PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID})
