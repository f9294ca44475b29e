"""The digital head-and-neck patient and analytic test objects, with known ground truth."""
