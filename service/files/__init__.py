"""File formats: NXtomo scans in and out (``nxtomo``), reconstructed volumes out (``volume``)."""
