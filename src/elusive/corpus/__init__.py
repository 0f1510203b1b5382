"""Stage 1, the corpus: texts and their questions (`records`: the types and the readers of
plain text, Markdown, JSONL and Hugging Face datasets; `hfdatasets`), synthetic biographies
(`bios`), SQuAD-style paragraph QA (`squad`), token-budget chunks (`chunking`) and span-cloze
probes from any text (`cloze`)."""
