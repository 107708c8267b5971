"""Input adapters: containers -> items, image decoding and pixels, texts, augmentation."""
