"""ctrlbench.bases"""
