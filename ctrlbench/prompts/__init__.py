"""ctrlbench.prompts"""
