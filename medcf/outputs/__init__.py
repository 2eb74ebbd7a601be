"""What the batch jobs leave behind: the run manifest, pseudonyms and keyed UIDs, and the counterfactual writers."""
