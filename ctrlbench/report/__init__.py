"""ctrlbench.report"""
