"""The write protocol as a whole: known failures, the model check, races, outages, crashes."""
