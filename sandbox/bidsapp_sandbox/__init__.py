"""No Google account, no patients: a Drive v3 emulator, synthetic exams, and the demo."""
