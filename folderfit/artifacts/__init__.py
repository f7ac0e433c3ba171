"""The files one stage hands to another, each with its writer and reader in one module: the
manifest of prepared images, data/corrections.csv, the model file, and the record of what the
model learned from (learned_from), the learning curve per class (learning_curve_record). Read these files only through their module.
"""
