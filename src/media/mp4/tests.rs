//! Round trips through libx264 and checks of the written files with ffprobe and a box parser.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::media::MediaError;

const SIZE: usize = 64;
const BACKGROUND: [u8; 3] = [30, 60, 90];
const SQUARE: [u8; 3] = [230, 200, 40];
const SQUARE_SIDE: usize = 16;

/// Frame `index` of a test clip: a square moving diagonally over a plain background.
fn moving_square_frame(index: usize, width: usize, height: usize) -> Vec<u8> {
    let left = (index * 3) % (width - SQUARE_SIDE);
    let top = (index * 2) % (height - SQUARE_SIDE);
    let mut rgb = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            let inside =
                (left..left + SQUARE_SIDE).contains(&x) && (top..top + SQUARE_SIDE).contains(&y);
            rgb.extend_from_slice(if inside { &SQUARE } else { &BACKGROUND });
        }
    }
    rgb
}

fn moving_square(count: usize, width: usize, height: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| moving_square_frame(i, width, height))
        .collect()
}

fn mean_abs_error(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let total: u64 = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y) as u64).sum();
    total as f64 / a.len() as f64
}

fn encode_clip(dir: &Path, name: &str, count: usize, fps: u32) -> PathBuf {
    let path = dir.join(name);
    encode_mp4(&moving_square(count, SIZE, SIZE), SIZE, SIZE, fps, &path).unwrap();
    path
}

/// Top-level MP4 box types in file order.
fn top_level_boxes(bytes: &[u8]) -> Vec<String> {
    let mut boxes = Vec::new();
    let mut offset = 0usize;
    while offset + 8 <= bytes.len() {
        let size32 = u32::from_be_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        let kind = String::from_utf8_lossy(&bytes[offset + 4..offset + 8]).into_owned();
        let size = match size32 {
            0 => bytes.len() - offset,
            1 => u64::from_be_bytes(bytes[offset + 8..offset + 16].try_into().unwrap()) as usize,
            n => n,
        };
        boxes.push(kind);
        assert!(size >= 8, "malformed box");
        offset += size;
    }
    boxes
}

/// ffprobe's view of the first video stream, counting frames by decoding them.
fn ffprobe_video(path: &Path) -> serde_json::Value {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=codec_name,pix_fmt,width,height,nb_read_frames,avg_frame_rate",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe (from the ffmpeg package) must be installed for these tests");
    assert!(
        output.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    parsed["streams"][0].clone()
}

fn assert_invalid_video(result: Result<impl std::fmt::Debug, MediaError>) {
    match result {
        Err(MediaError::InvalidVideo(_)) => {}
        other => panic!("expected InvalidVideo, got {other:?}"),
    }
}

#[test]
fn round_trip_keeps_every_frame_size_rate_and_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = encode_clip(dir.path(), "clip.mp4", 16, 8);
    let video = decode_mp4(&path).unwrap();
    assert_eq!(video.frames.len(), 16);
    assert_eq!((video.width, video.height), (SIZE, SIZE));
    assert!((video.fps - 8.0).abs() < 1e-9, "fps {}", video.fps);
    for (index, frame) in video.frames.iter().enumerate() {
        let error = mean_abs_error(frame, &moving_square_frame(index, SIZE, SIZE));
        assert!(error < 4.0, "frame {index}: mean abs error {error}");
    }
    // The square is where it should be, not merely somewhere: check one pixel inside it.
    let last = &video.frames[15];
    let (x, y) = (
        (15 * 3) % (SIZE - SQUARE_SIDE) + 8,
        (15 * 2) % (SIZE - SQUARE_SIDE) + 8,
    );
    let pixel = &last[(y * SIZE + x) * 3..][..3];
    for (got, want) in pixel.iter().zip(SQUARE) {
        assert!(got.abs_diff(want) <= 12, "square pixel {pixel:?}");
    }
}

#[test]
fn output_is_h264_yuv420p_with_moov_first_and_all_frames_per_ffprobe() {
    let dir = tempfile::tempdir().unwrap();
    let path = encode_clip(dir.path(), "clip.mp4", 16, 8);
    let stream = ffprobe_video(&path);
    assert_eq!(stream["codec_name"], "h264");
    assert_eq!(stream["pix_fmt"], "yuv420p");
    assert_eq!(stream["width"], 64);
    assert_eq!(stream["height"], 64);
    assert_eq!(stream["nb_read_frames"], "16");
    assert_eq!(stream["avg_frame_rate"], "8/1");

    let boxes = top_level_boxes(&std::fs::read(&path).unwrap());
    let moov = boxes.iter().position(|b| b == "moov").expect("moov box");
    let mdat = boxes.iter().position(|b| b == "mdat").expect("mdat box");
    assert!(moov < mdat, "boxes in order {boxes:?}");
}

#[test]
fn odd_and_single_frame_counts_survive() {
    let dir = tempfile::tempdir().unwrap();
    for count in [1, 7] {
        let path = encode_clip(dir.path(), &format!("clip{count}.mp4"), count, 24);
        assert_eq!(decode_mp4(&path).unwrap().frames.len(), count);
        assert_eq!(ffprobe_video(&path)["nb_read_frames"], count.to_string());
    }
}

#[test]
fn encoding_is_atomic_and_replaces_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out:put.mp4"); // ':' must not be taken for a protocol
    std::fs::write(&path, b"stale").unwrap();
    encode_mp4(&moving_square(4, SIZE, SIZE), SIZE, SIZE, 8, &path).unwrap();
    assert_eq!(decode_mp4(&path).unwrap().frames.len(), 4);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("out:put.mp4")]);
}

#[test]
fn bad_encode_arguments_are_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("never.mp4");
    let odd = moving_square(2, 63, 64);
    let cases: Vec<Result<(), MediaError>> = vec![
        encode_mp4(&odd, 63, 64, 8, &path),
        encode_mp4(&[], SIZE, SIZE, 8, &path),
        encode_mp4(&[vec![0; 10]], SIZE, SIZE, 8, &path),
        encode_mp4(&moving_square(1, SIZE, SIZE), SIZE, SIZE, 0, &path),
    ];
    for result in cases {
        assert!(
            matches!(result, Err(MediaError::InvalidInput(_))),
            "{result:?}"
        );
    }
    assert!(!path.exists());
}

#[test]
fn probe_reads_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = encode_clip(dir.path(), "clip.mp4", 16, 8);
    let info = probe_mp4(&path).unwrap();
    assert_eq!((info.width, info.height, info.num_frames), (64, 64, 16));
    assert_eq!(info.codec, "h264");
    assert!((info.fps - 8.0).abs() < 1e-9);
    assert!(
        (info.duration_seconds - 2.0).abs() < 0.01,
        "duration {}",
        info.duration_seconds
    );
    info.check_limits(&DecodeLimits::default()).unwrap();
    assert_eq!(validate_mp4(&path, &DecodeLimits::default()).unwrap(), info);
    assert_invalid_video(info.check_limits(&DecodeLimits {
        max_frames: 15,
        ..DecodeLimits::default()
    }));
}

#[test]
fn resized_decode_scales_and_stops_after_max_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = encode_clip(dir.path(), "clip.mp4", 16, 8);
    let video = decode_mp4_resized(&path, 32, 48, 5).unwrap();
    assert_eq!(video.frames.len(), 5);
    assert_eq!((video.width, video.height), (32, 48));
    assert!(video.frames.iter().all(|f| f.len() == 32 * 48 * 3));
    // Frame 0's square covers x 0..16, y 0..16 of 64x64: x 0..8, y 0..12 after scaling.
    let inside = &video.frames[0][(6 * 32 + 4) * 3..][..3];
    let outside = &video.frames[0][(40 * 32 + 28) * 3..][..3];
    for (got, want) in inside
        .iter()
        .zip(SQUARE)
        .chain(outside.iter().zip(BACKGROUND))
    {
        assert!(
            got.abs_diff(want) <= 12,
            "inside {inside:?} outside {outside:?}"
        );
    }
    assert!(matches!(
        decode_mp4_resized(&path, 0, 48, 5),
        Err(MediaError::InvalidInput(_))
    ));
}

#[test]
fn limits_refuse_long_or_large_videos() {
    let dir = tempfile::tempdir().unwrap();
    let path = encode_clip(dir.path(), "clip.mp4", 16, 8);
    let cases = [
        DecodeLimits {
            max_frames: 15,
            ..DecodeLimits::default()
        },
        DecodeLimits {
            max_pixels: 64 * 63,
            ..DecodeLimits::default()
        },
        DecodeLimits {
            max_decoded_bytes: 64 * 64 * 3 * 10,
            ..DecodeLimits::default()
        },
    ];
    for limits in cases {
        assert_invalid_video(decode_mp4_with_limits(&path, &limits));
        assert_invalid_video(validate_mp4(&path, &limits));
    }
}

#[test]
fn truncated_files_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let path = encode_clip(dir.path(), "clip.mp4", 16, 8);
    let bytes = std::fs::read(&path).unwrap();
    // Cut inside the moov box, and inside the media data after a complete moov.
    for keep in [200, bytes.len() * 3 / 5, bytes.len() - 10] {
        let truncated = dir.path().join(format!("truncated{keep}.mp4"));
        std::fs::write(&truncated, &bytes[..keep]).unwrap();
        assert_invalid_video(decode_mp4(&truncated));
        assert_invalid_video(validate_mp4(&truncated, &DecodeLimits::default()));
    }
}

#[test]
fn damaged_frame_data_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let path = encode_clip(dir.path(), "clip.mp4", 16, 8);
    let mut bytes = std::fs::read(&path).unwrap();
    // The moov box comes first, so the last 40 % of the file is frame data only.
    let start = bytes.len() * 3 / 5;
    for byte in &mut bytes[start..] {
        *byte ^= 0x5A;
    }
    let damaged = dir.path().join("damaged.mp4");
    std::fs::write(&damaged, &bytes).unwrap();
    assert_invalid_video(decode_mp4(&damaged));
    assert_invalid_video(validate_mp4(&damaged, &DecodeLimits::default()));
}

#[test]
fn empty_random_and_non_video_files_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    assert_invalid_video(decode_mp4(&empty));
    assert_invalid_video(probe_mp4(&empty));

    // Deterministic pseudo-random bytes (xorshift), with and without an MP4-looking prefix.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let random = dir.path().join("random.mp4");
    std::fs::write(&random, &noise).unwrap();
    assert_invalid_video(decode_mp4(&random));
    let mut fake = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2".to_vec();
    fake.extend_from_slice(&noise);
    let fake_path = dir.path().join("fake.mp4");
    std::fs::write(&fake_path, &fake).unwrap();
    assert_invalid_video(decode_mp4(&fake_path));

    let png = dir.path().join("image.mp4");
    std::fs::write(&png, crate::media::encode_png_rgb(2, 2, &[0; 12]).unwrap()).unwrap();
    assert_invalid_video(decode_mp4(&png));

    let text = dir.path().join("playlist.mp4");
    std::fs::write(&text, format!("#EXTM3U\n#EXTINF:1,\n{}\n", empty.display())).unwrap();
    assert_invalid_video(decode_mp4(&text));
}

#[test]
fn audio_only_mp4_has_no_video_track() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audio.mp4");
    let status = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=0.2",
            "-c:a",
            "aac",
        ])
        .arg(&path)
        .status()
        .expect("ffmpeg must be installed for these tests");
    assert!(status.success());
    assert_invalid_video(decode_mp4(&path));
    assert_invalid_video(probe_mp4(&path));
}

#[test]
fn bt709_full_range_colours_are_decoded_correctly() {
    // A solid colour converted with the BT.709 matrix into full range and tagged as such; read
    // with BT.601 limited-range assumptions it would come out visibly wrong.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bt709.mp4");
    let status = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "color=c=0xC03020:s=64x64:d=0.5:r=8",
        ])
        .args([
            "-vf",
            "scale=out_color_matrix=bt709:out_range=full,format=yuv420p",
        ])
        .args([
            "-colorspace",
            "bt709",
            "-color_range",
            "pc",
            "-c:v",
            "libx264",
            "-crf",
            "0",
        ])
        .arg(&path)
        .status()
        .expect("ffmpeg must be installed for these tests");
    assert!(status.success());
    let video = decode_mp4(&path).unwrap();
    let pixel = &video.frames[0][(32 * 64 + 32) * 3..][..3];
    for (got, want) in pixel.iter().zip([0xC0u8, 0x30, 0x20]) {
        assert!(got.abs_diff(want) <= 6, "decoded {pixel:?}");
    }
}

#[test]
fn missing_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        decode_mp4(&dir.path().join("absent.mp4")),
        Err(MediaError::Io { .. })
    ));
}

/// The same frames give the same bytes, also when the heap holds garbage as it does in a server
/// that has run a model. The clip (8 frames, 64×64, from the random test model, 2.7 kB) is one
/// whose encodings differed in about 6 of 10 tries with x264's macroblock-tree rate control,
/// which reads memory it never wrote on clips shorter than its lookahead.
#[test]
fn encoding_the_same_frames_twice_gives_the_same_bytes() {
    let clip =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/media/mp4/testdata/random_model_clip.mp4");
    let frames = decode_mp4(&clip).unwrap().frames;
    let dir = tempfile::tempdir().unwrap();
    let encode = |name: &str| {
        let path = dir.path().join(name);
        encode_mp4(&frames, SIZE, SIZE, 8, &path).unwrap();
        std::fs::read(path).unwrap()
    };
    let reference = encode("reference.mp4");
    for attempt in 0..40 {
        // Large blocks filled and freed, so that the encoder's buffers come back holding them.
        let garbage: Vec<Vec<u8>> = (0..24usize)
            .map(|block| {
                vec![(attempt * 24 + block) as u8 ^ 0x5a; 100_000 + 150_000 * (block % 12)]
            })
            .collect();
        drop(garbage);
        // Two at once, one on a fresh thread (with its own allocator arena), like a server's
        // workers.
        let (here, there) = std::thread::scope(|scope| {
            let there = scope.spawn(|| encode(&format!("{attempt}-thread.mp4")));
            (encode(&format!("{attempt}.mp4")), there.join().unwrap())
        });
        assert!(
            here == reference && there == reference,
            "encoding {attempt} differs from the first"
        );
    }
}
