"""ctrlbench.metrics"""
