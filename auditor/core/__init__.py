"""Floor 5: the method's computations on top of a backend: pair statistics and the angle gap, the range
rule, refusal classifiers, the progressive search, eval metrics and the judge."""
