"""Will a pickle made there load here: fingerprints of environments, the measured matrix and the policy."""
