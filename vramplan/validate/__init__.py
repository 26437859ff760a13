"""Score the estimator: against traces of the real code (the matrix) and against GPU measurements."""
