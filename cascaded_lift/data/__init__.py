"""Input pipeline shared by all pose datasets: grain over tfds data sources, crops, augmentation.

Modules (this package imports none of them, so that `data.schema` stays light for the builders):
  pipeline    create_train_iterator, create_eval_iterator, choose_eval_boxes, steps_per_epoch,
              eval_num_examples, mean_pose, crop_config
  config      default_data_config, source_config, eval_boxes (the config section's fields)
  sources     load_source (random-access records of a built dataset)
  transforms  the crop (crop_box_of, crop_image: shared with inference.Predictor) and prepare
              (record -> example)
  augment, schema
"""
