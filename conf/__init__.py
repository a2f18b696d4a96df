# Hydra config package (config_path="pkg://mmnsim.conf"): the groups below are plain YAML files.
