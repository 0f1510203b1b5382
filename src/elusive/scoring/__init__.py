"""Stage 2, the contrast: the attention each token receives in the large and the small model
(`attention`, with the fused GPU kernel in `kernels`), the scores file format that every later
stage reads without torch (`scores`), and where each scorer ranks a corpus's spans (`scorers`)."""
