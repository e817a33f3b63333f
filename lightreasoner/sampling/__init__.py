"""Stage 1: contrastive sampling (the expert's traces scored by both models) and the trace cache it fills."""
