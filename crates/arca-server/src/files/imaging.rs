//! Images: what the bytes are (sniffed from their first bytes, never taken
//! from the client's word), whether they are a sound image within the
//! pixel limit, and thumbnails. Pure CPU work on bytes: the callers run it
//! on the bounded blocking pool (`gateway::files`), never on an async
//! worker.
//!
//! The pixel limit is checked from the header before anything is decoded:
//! a 10-byte PNG header can claim 100,000 x 100,000 pixels (40 GB of
//! RGBA). Decoding then runs with `image`'s limits too; on the path that
//! applies EXIF orientation (`into_decoder` + `from_decoder`) `image` does
//! not apply its allocation limit (image-rs/image#3081), so the decoder's
//! own `total_bytes()` is checked here first.

use std::io::Cursor;

use arca_store::ThumbFormat;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

/// An image format the files API accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PNG.
    Png,
    /// JPEG.
    Jpeg,
    /// GIF.
    Gif,
    /// WebP.
    Webp,
}

impl Format {
    /// The lowercase name the contract uses (`image.format`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Gif => "gif",
            Self::Webp => "webp",
        }
    }

    /// The media type.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Gif => "image/gif",
            Self::Webp => "image/webp",
        }
    }

    /// The format by its contract name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "png" => Some(Self::Png),
            "jpeg" => Some(Self::Jpeg),
            "gif" => Some(Self::Gif),
            "webp" => Some(Self::Webp),
            _ => None,
        }
    }

    fn image_format(self) -> ImageFormat {
        match self {
            Self::Png => ImageFormat::Png,
            Self::Jpeg => ImageFormat::Jpeg,
            Self::Gif => ImageFormat::Gif,
            Self::Webp => ImageFormat::WebP,
        }
    }
}

/// Bytes needed to sniff: the longest signature checked (WebP's 12).
pub const SNIFF_BYTES: usize = 12;

/// The image format of bytes starting with `head`, by signature; `None`
/// for anything else (the declared type is then used, and the file is
/// never treated as an image).
pub fn sniff(head: &[u8]) -> Option<Format> {
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else if head.starts_with(b"\xff\xd8\xff") {
        Some(Format::Jpeg)
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some(Format::Gif)
    } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some(Format::Webp)
    } else {
        None
    }
}

/// Why an image was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageProblem {
    /// The header claims more pixels than allowed.
    TooManyPixels { width: u32, height: u32, max: u64 },
    /// The bytes are not a sound image of their format.
    Undecodable(String),
}

impl std::fmt::Display for ImageProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooManyPixels { width, height, max } => write!(
                f,
                "the image claims {width} x {height} pixels, over files.max_image_pixels ({max})"
            ),
            Self::Undecodable(why) => write!(f, "the image does not decode: {why}"),
        }
    }
}

/// The decoding limits for at most `max_pixels` pixels.
fn limits(max_pixels: u64) -> Limits {
    let side = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    let mut l = Limits::default();
    l.max_image_width = Some(side);
    l.max_image_height = Some(side);
    // 16-bit RGBA is the widest pixel these formats decode to.
    l.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    l
}

fn reader(bytes: &[u8], format: Format, max_pixels: u64) -> ImageReader<Cursor<&[u8]>> {
    let mut r = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    r.limits(limits(max_pixels));
    r
}

/// The dimensions from the header, refused when over `max_pixels`
/// (nothing decoded yet).
pub fn dimensions(
    bytes: &[u8],
    format: Format,
    max_pixels: u64,
) -> Result<(u32, u32), ImageProblem> {
    // What the first bytes claim, before any decoder reads further (the
    // PNG decoder wants the chunks up to the image data first).
    if let Some((width, height)) = claimed(bytes, format)
        && u64::from(width) * u64::from(height) > max_pixels
    {
        return Err(ImageProblem::TooManyPixels {
            width,
            height,
            max: max_pixels,
        });
    }
    let (width, height) = reader(bytes, format, u64::from(u32::MAX))
        .into_dimensions()
        .map_err(|e| ImageProblem::Undecodable(e.to_string()))?;
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ImageProblem::TooManyPixels {
            width,
            height,
            max: max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(ImageProblem::Undecodable("the image has no pixels".into()));
    }
    Ok((width, height))
}

/// The dimensions a PNG's `IHDR` or a GIF's screen descriptor claims, read
/// from fixed offsets.
fn claimed(bytes: &[u8], format: Format) -> Option<(u32, u32)> {
    match format {
        Format::Png if bytes.get(12..16) == Some(b"IHDR") => {
            let w = u32::from_be_bytes(bytes.get(16..20)?.try_into().ok()?);
            let h = u32::from_be_bytes(bytes.get(20..24)?.try_into().ok()?);
            Some((w, h))
        }
        Format::Gif => {
            let w = u16::from_le_bytes(bytes.get(6..8)?.try_into().ok()?);
            let h = u16::from_le_bytes(bytes.get(8..10)?.try_into().ok()?);
            Some((u32::from(w), u32::from(h)))
        }
        _ => None,
    }
}

/// Checks that `bytes` are a whole image of `format` within `max_pixels`:
/// the header first, then a full decode. Returns the dimensions.
pub fn check(bytes: &[u8], format: Format, max_pixels: u64) -> Result<(u32, u32), ImageProblem> {
    let dims = dimensions(bytes, format, max_pixels)?;
    if format == Format::Jpeg && !jpeg_is_complete(bytes) {
        // The JPEG decoder fills a truncated scan with grey and reports
        // success; a file that stops before its end marker is cut short.
        return Err(ImageProblem::Undecodable(
            "the JPEG stops before its end marker (truncated)".into(),
        ));
    }
    decode(bytes, format, max_pixels)?;
    Ok(dims)
}

/// Whether a JPEG ends with its end-of-image marker (`FF D9`), allowing
/// trailing padding some cameras add.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(64 << 10)..];
    tail.windows(2).any(|w| w == [0xff, 0xd9])
}

/// Decodes the whole image, EXIF orientation applied.
fn decode(bytes: &[u8], format: Format, max_pixels: u64) -> Result<DynamicImage, ImageProblem> {
    let undecodable = |e: image::ImageError| ImageProblem::Undecodable(e.to_string());
    let mut decoder = reader(bytes, format, max_pixels)
        .into_decoder()
        .map_err(undecodable)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ImageProblem::TooManyPixels {
            width,
            height,
            max: max_pixels,
        });
    }
    // `from_decoder` skips the allocation limit: check it here.
    let budget = max_pixels.saturating_mul(8);
    if decoder.total_bytes() > budget {
        return Err(ImageProblem::Undecodable(format!(
            "decoding would need {} bytes",
            decoder.total_bytes()
        )));
    }
    let orientation = decoder.orientation().map_err(undecodable)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(undecodable)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// The size of a thumbnail bounded by `bound` on its longer side, aspect
/// kept, never larger than the image.
pub fn thumbnail_size(width: u32, height: u32, bound: u32) -> (u32, u32) {
    let longer = width.max(height);
    if longer <= bound {
        return (width, height);
    }
    let scale = |side: u32| {
        let scaled =
            (u64::from(side) * u64::from(bound) + u64::from(longer) / 2) / u64::from(longer);
        u32::try_from(scaled).unwrap_or(bound).clamp(1, bound)
    };
    (scale(width), scale(height))
}

/// A thumbnail of `bytes` (an image of `format`): oriented as its EXIF
/// says, at most `bound` pixels on its longer side, never upscaled,
/// encoded as `out`.
pub fn thumbnail(
    bytes: &[u8],
    format: Format,
    max_pixels: u64,
    bound: u32,
    out: ThumbFormat,
) -> Result<Vec<u8>, ImageProblem> {
    dimensions(bytes, format, max_pixels)?;
    let img = decode(bytes, format, max_pixels)?;
    let (w, h) = thumbnail_size(img.width(), img.height(), bound);
    let small = if (w, h) == (img.width(), img.height()) {
        img
    } else {
        img.resize_exact(w, h, image::imageops::FilterType::Triangle)
    };
    // Thumbnails are opaque: transparency over white, as browsers show a
    // JPEG.
    let rgb = flatten(&small);
    let mut encoded = Vec::new();
    match out {
        ThumbFormat::Jpeg => {
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut encoded, 82);
            rgb.write_with_encoder(encoder)
                .map_err(|e| ImageProblem::Undecodable(format!("encoding: {e}")))?;
        }
        ThumbFormat::Webp => {
            let webp =
                webp::Encoder::from_rgb(rgb.as_raw(), rgb.width(), rgb.height()).encode(80.0);
            encoded.extend_from_slice(&webp);
        }
    }
    Ok(encoded)
}

/// The image as 8-bit RGB, transparent pixels blended over white.
fn flatten(img: &DynamicImage) -> image::RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let blend = |c: u8| {
            let (c, a) = (u16::from(c), u16::from(a));
            u8::try_from((c * a + 255 * (255 - a) + 127) / 255).unwrap_or(255)
        };
        image::Rgb([blend(r), blend(g), blend(b)])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(format: ImageFormat, w: u32, h: u32) -> Vec<u8> {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, 90])
        }));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).expect("encode");
        out.into_inner()
    }

    #[test]
    fn sniffing_knows_the_four_formats_and_nothing_else() {
        assert_eq!(sniff(&encoded(ImageFormat::Png, 2, 2)), Some(Format::Png));
        assert_eq!(sniff(&encoded(ImageFormat::Jpeg, 2, 2)), Some(Format::Jpeg));
        assert_eq!(sniff(&encoded(ImageFormat::Gif, 2, 2)), Some(Format::Gif));
        assert_eq!(sniff(&encoded(ImageFormat::WebP, 2, 2)), Some(Format::Webp));
        for other in [
            &b"<html><script>alert(1)</script>"[..],
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
            b"<?xml version=\"1.0\"?>",
            b"RIFF\0\0\0\0WAVE",
            b"\x89PN",
            b"",
        ] {
            assert_eq!(sniff(other), None, "{other:?}");
        }
    }

    #[test]
    fn a_header_claiming_too_many_pixels_is_refused_before_decoding() {
        // A PNG signature and an IHDR chunk claiming 100,000 x 100,000.
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&100_000u32.to_be_bytes());
        png.extend_from_slice(&100_000u32.to_be_bytes());
        png.extend_from_slice(&[8, 2, 0, 0, 0]);
        let crc = crc32(&png[12..]);
        png.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(
            check(&png, Format::Png, 40_000_000),
            Err(ImageProblem::TooManyPixels {
                width: 100_000,
                height: 100_000,
                max: 40_000_000
            })
        );
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for b in bytes {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn sound_images_pass_and_truncated_ones_do_not() {
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::WebP,
        ] {
            let bytes = encoded(format, 40, 30);
            let f = sniff(&bytes).expect("sniffed");
            assert_eq!(check(&bytes, f, 40_000_000), Ok((40, 30)), "{format:?}");
            let cut = &bytes[..bytes.len() * 2 / 3];
            assert!(
                matches!(check(cut, f, 40_000_000), Err(ImageProblem::Undecodable(_))),
                "{format:?} truncated"
            );
            assert!(matches!(
                check(&bytes[..5.min(bytes.len())], f, 40_000_000),
                Err(ImageProblem::Undecodable(_))
            ));
        }
    }

    #[test]
    fn thumbnails_keep_the_aspect_and_never_upscale() {
        assert_eq!(thumbnail_size(4000, 3000, 256), (256, 192));
        assert_eq!(thumbnail_size(3000, 4000, 256), (192, 256));
        assert_eq!(thumbnail_size(100, 50, 256), (100, 50));
        assert_eq!(thumbnail_size(10_000, 1, 16), (16, 1));
        let png = encoded(ImageFormat::Png, 400, 100);
        for out in [ThumbFormat::Jpeg, ThumbFormat::Webp] {
            let t = thumbnail(&png, Format::Png, 40_000_000, 64, out).expect("thumb");
            let img = image::load_from_memory(&t).expect("decodes");
            assert_eq!((img.width(), img.height()), (64, 16), "{out:?}");
        }
    }
}
