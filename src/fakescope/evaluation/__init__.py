"""Measuring a run: the metric set, evaluation on a data set, plots and the HTML report."""
