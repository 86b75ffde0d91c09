"""Hardware/topology configs that the fakechip vendor ships, one folder per case
(``retinanet/F1x1x1.yaml``); found through the hook ``case_config_dirs``."""
