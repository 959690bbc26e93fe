"""bidsapp: DICOM exams to a validated, de-identified BIDS dataset, one subject per job."""

__version__ = "0.1.0"
