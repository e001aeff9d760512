"""Generate stage: synthetic samples in the CMS 2012 outreach NanoAOD layout and their fileset."""
