"""``voxfit.bids``: whole studies from BIDS datasets and fMRIPrep derivatives (needs ``pip install 'voxfit[bids]'``)."""
