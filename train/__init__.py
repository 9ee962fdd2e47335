"""Training side of adsrt: degradations, datasets, the trainer, FAIG-SD selection, deltas, classifier,
calibration and evaluation (the ADMS stages). Evaluation and calibration run ADS through the runtime's
:class:`adsrt.runtime.restorer.Restorer`; the networks are :mod:`adsrt.arch`."""
