"""Zero-shot classification, retrieval and linear-probe evaluation."""
