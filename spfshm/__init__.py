"""spfshm: an executable, truly parallel model of the Linux page-fault locking protocols."""
__version__ = "0.1.0"
