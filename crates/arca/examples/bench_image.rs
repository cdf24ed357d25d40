//! Writes a photo-like JPEG (a gradient with noise, quality 90) of the given
//! size, for `bench/files.py`: `bench_image WIDTH HEIGHT OUT.jpg`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(w), Some(h), Some(out)) = (
        args.get(1).and_then(|a| a.parse::<u32>().ok()),
        args.get(2).and_then(|a| a.parse::<u32>().ok()),
        args.get(3),
    ) else {
        eprintln!("usage: bench_image WIDTH HEIGHT OUT.jpg");
        return ExitCode::from(2);
    };
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let noise = (seed % 48) as u32;
        image::Rgb([
            ((x * 200 / w) + noise) as u8,
            ((y * 200 / h) + noise) as u8,
            (((x + y) * 100 / (w + h)) + noise) as u8,
        ])
    });
    let file = match std::fs::File::create(out) {
        Ok(f) => std::io::BufWriter::new(f),
        Err(e) => {
            eprintln!("{out}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(file, 90);
    match img.write_with_encoder(encoder) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{out}: {e}");
            ExitCode::FAILURE
        }
    }
}
