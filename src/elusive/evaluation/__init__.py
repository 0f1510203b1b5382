"""Stage 5, measuring: closed-book QA by greedy generation (`evaluate`, its EM/F1 in
`elusive.metrics`) and the knowledge probes scored in the same pass (`probes`)."""
