"""Reference side of the segmentation benchmark: the book's code, re-typed.

This module is a plain-Python re-typing of the code of *Dive into Deep
Learning* (PyTorch edition), section 14.9 "Semantic Segmentation and the
Dataset" (``read_voc_images``, ``VOC_COLORMAP``, ``VOC_CLASSES``,
``voc_colormap2label``, ``voc_label_indices``, ``voc_rand_crop``,
``VOCSegDataset``, ``load_data_voc``).  ``d2l`` itself is not imported.

It is used only as the reference ("book") side of
``benchmarks/segmentation_bench.py``, so the book's data handling and its
performance characteristics are deliberately kept: every JPEG and every label
PNG (read in RGB mode) is decoded up front, every kept image is stored as a
normalised float32 tensor and every label as an RGB uint8 tensor, all in
memory, and the colour → class lookup (a 256**3 int64 table) runs in
``__getitem__`` on each crop.  Unknown colours, including VOC's void border
(224, 224, 192), map to background, as in the book.  The only changes are
that ``load_data_voc`` takes the VOC folder and the worker count as
arguments (the book downloads the data and uses ``d2l.get_dataloader_workers()``)
instead of fetching anything.  Do not "optimise" this file.
"""

from __future__ import annotations

import argparse
import os

import torch
import torchvision

# ---------------------------------------------------------------------------
# 14.9 Semantic Segmentation and the Dataset
# ---------------------------------------------------------------------------


def read_voc_images(voc_dir, is_train=True):
    """Read all VOC feature and label images."""
    txt_fname = os.path.join(voc_dir, 'ImageSets', 'Segmentation',
                             'train.txt' if is_train else 'val.txt')
    mode = torchvision.io.image.ImageReadMode.RGB
    with open(txt_fname, 'r') as f:
        images = f.read().split()
    features, labels = [], []
    for i, fname in enumerate(images):
        features.append(torchvision.io.read_image(os.path.join(
            voc_dir, 'JPEGImages', f'{fname}.jpg')))
        labels.append(torchvision.io.read_image(os.path.join(
            voc_dir, 'SegmentationClass', f'{fname}.png'), mode))
    return features, labels


VOC_COLORMAP = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0],
                [0, 0, 128], [128, 0, 128], [0, 128, 128], [128, 128, 128],
                [64, 0, 0], [192, 0, 0], [64, 128, 0], [192, 128, 0],
                [64, 0, 128], [192, 0, 128], [64, 128, 128], [192, 128, 128],
                [0, 64, 0], [128, 64, 0], [0, 192, 0], [128, 192, 0],
                [0, 64, 128]]

VOC_CLASSES = ['background', 'aeroplane', 'bicycle', 'bird', 'boat',
               'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
               'diningtable', 'dog', 'horse', 'motorbike', 'person',
               'potted plant', 'sheep', 'sofa', 'train', 'tv/monitor']


def voc_colormap2label():
    """Build the mapping from RGB to class indices for VOC labels."""
    colormap2label = torch.zeros(256 ** 3, dtype=torch.long)
    for i, colormap in enumerate(VOC_COLORMAP):
        colormap2label[
            (colormap[0] * 256 + colormap[1]) * 256 + colormap[2]] = i
    return colormap2label


def voc_label_indices(colormap, colormap2label):
    """Map any RGB values in VOC labels to their class indices."""
    colormap = colormap.permute(1, 2, 0).numpy().astype('int32')
    idx = ((colormap[:, :, 0] * 256 + colormap[:, :, 1]) * 256
           + colormap[:, :, 2])
    return colormap2label[idx]


def voc_rand_crop(feature, label, height, width):
    """Randomly crop both feature and label images."""
    rect = torchvision.transforms.RandomCrop.get_params(
        feature, (height, width))
    feature = torchvision.transforms.functional.crop(feature, *rect)
    label = torchvision.transforms.functional.crop(label, *rect)
    return feature, label


class VOCSegDataset(torch.utils.data.Dataset):
    """A customized dataset to load the VOC dataset."""

    def __init__(self, is_train, crop_size, voc_dir):
        self.transform = torchvision.transforms.Normalize(
            mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        self.crop_size = crop_size
        features, labels = read_voc_images(voc_dir, is_train=is_train)
        self.features = [self.normalize_image(feature)
                         for feature in self.filter(features)]
        self.labels = self.filter(labels)
        self.colormap2label = voc_colormap2label()
        print('read ' + str(len(self.features)) + ' examples')

    def normalize_image(self, img):
        return self.transform(img.float() / 255)

    def filter(self, imgs):
        return [img for img in imgs if (
            img.shape[1] >= self.crop_size[0] and
            img.shape[2] >= self.crop_size[1])]

    def __getitem__(self, idx):
        feature, label = voc_rand_crop(self.features[idx], self.labels[idx],
                                       *self.crop_size)
        return (feature, voc_label_indices(label, self.colormap2label))

    def __len__(self):
        return len(self.features)


def load_data_voc(batch_size, crop_size, voc_dir, num_workers=0):
    """Load the VOC semantic segmentation dataset."""
    train_iter = torch.utils.data.DataLoader(
        VOCSegDataset(True, crop_size, voc_dir), batch_size,
        shuffle=True, drop_last=True, num_workers=num_workers)
    test_iter = torch.utils.data.DataLoader(
        VOCSegDataset(False, crop_size, voc_dir), batch_size,
        drop_last=True, num_workers=num_workers)
    return train_iter, test_iter


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--voc-dir', required=True,
                        help='the VOC2012 folder (VOCdevkit/VOC2012)')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--crop', type=int, nargs=2, default=(320, 480),
                        metavar=('HEIGHT', 'WIDTH'))
    args = parser.parse_args(argv)
    train_iter, test_iter = load_data_voc(args.batch_size, tuple(args.crop),
                                          args.voc_dir)
    for X, Y in train_iter:
        print(X.shape)
        print(Y.shape)
        break


if __name__ == '__main__':
    main()
