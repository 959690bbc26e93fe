"""Visual QC: each subject's report page and the dataset's index of them."""
