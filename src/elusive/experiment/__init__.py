"""The stages together: a run config (`config`) executed as a list of fingerprinted stages
(`pipeline`, `runs`) into one run-folder layout (`layout`, upgraded by `migrate`), Figures 2-3's
attention rows (`analysis`), the report gathered from the folder (`summary`) and rendered
(`report`, `figures`), Table 1 (`table1`) and the exported model folder (`export`)."""
