"""A short fixed-seed campaign of the correct configurations (see spfshm/run/campaign.py;
``spfshm fuzz`` runs longer ones)."""
from spfshm.run.campaign_tests import test_campaign_seed  # noqa: F401  (collected here)
