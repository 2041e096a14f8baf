"""Checking and adapting a trained model at a hospital's own site.

- :func:`calibrate` (``pneumolab calibrate``): a labeled site sample refits the temperature and intercept and
  re-chooses the threshold;
- :func:`adapt` (``pneumolab adapt``): unlabeled site images re-estimate BatchNorm statistics (AdaBN) and the
  site's class prior (EM, Saerens et al. 2002);
- :func:`monitor` (``pneumolab monitor``): what a model answered there, period by period, from the service's
  audit log or ``predict --json`` lines, with the periods that stand out.

The first two write a **new** run folder whose ``model.pt`` records where, on what and when it was changed
(``meta["site"]``); the original run is never touched. Import from the submodules (``adapt``, ``calibrate``,
``provenance``, ``folds``, ``monitor``): the service reads provenance without importing the training stack.
"""
