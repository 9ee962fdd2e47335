"""Training side of adsrt: degradations, datasets, metrics, backbones and the ADMS training stages."""
