"""Hyperparameter sweeps on Ray Tune: the space, the plan, the schedulers, the trials and the report.

- :mod:`~hfray.tune.driver`: ``hfray sweep`` end to end (:func:`~hfray.tune.driver.run_sweep`);
- :mod:`~hfray.tune.space`, :mod:`~hfray.tune.plan`: the search space checked at its edges, the metric and steps;
- :mod:`~hfray.tune.placement`: what a trial holds, how many run at once, the driver's connection (warm trials);
- :mod:`~hfray.tune.schedulers`: Ray's schedulers with a decision log;
- :mod:`~hfray.tune.trial`: one trial's Ray Train run (in the Tune trial process);
- :mod:`~hfray.tune.controller`: the Train -> Tune bridge (in each trial's Train controller);
- :mod:`~hfray.tune.results`: one row per trial, the best checkpoint exported, the report files.
"""
