"""Floor 1 (bottom): the compiled core (cpp/), loaded as a torch extension on first use."""
