//! MP4 → RGB24 frames, upload validation, and cheap metadata probing.

use std::path::Path;

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg::{codec, decoder, format, frame, media, Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;

use super::{
    check_frame_count, check_frame_size, init, local_file_url, DecodeLimits, DecodedVideo,
    VideoInfo,
};
use crate::media::MediaError;

/// The MP4/MOV demuxer's names; no other container is ever probed.
const ALLOWED_FORMATS: &str = "mov,mp4,m4a,3gp,3g2,mj2";

/// Reads the container's metadata without decoding pictures. Fails with
/// [`MediaError::InvalidVideo`] for anything that is not an MP4 with a decodable video track
/// holding at least one frame. Damaged or truncated frame data goes unnoticed here; use
/// [`validate_mp4`] to check an upload.
pub fn probe_mp4(path: &Path) -> Result<VideoInfo, MediaError> {
    let mut input = open_input(path)?;
    let track = VideoTrack::find(&input)?;
    let num_frames = match track.declared_frames {
        Some(frames) => frames,
        // Containers without a sample count: count the track's packets (no decoding).
        None => count_packets(&mut input, track.index)?,
    };
    if num_frames == 0 {
        return Err(MediaError::InvalidVideo(
            "the video track has no frames".into(),
        ));
    }
    let fps = track.fps(num_frames)?;
    Ok(VideoInfo {
        width: track.width,
        height: track.height,
        fps,
        num_frames,
        duration_seconds: track.duration_seconds.unwrap_or(num_frames as f64 / fps),
        codec: track.codec,
    })
}

/// Decodes every frame at its stored size within [`DecodeLimits::default`].
pub fn decode_mp4(path: &Path) -> Result<DecodedVideo, MediaError> {
    decode_mp4_with_limits(path, &DecodeLimits::default())
}

/// Decodes every frame at its stored size. A video beyond `limits`, or one whose frames cannot
/// all be read and decoded (corrupt, truncated), is an [`MediaError::InvalidVideo`].
pub fn decode_mp4_with_limits(
    path: &Path,
    limits: &DecodeLimits,
) -> Result<DecodedVideo, MediaError> {
    let outcome = decode(
        path,
        limits,
        None,
        FrameCountPolicy::RefuseBeyondLimit,
        PixelPolicy::Keep,
    )?;
    outcome.into_video()
}

/// Decodes the whole video without keeping the pictures, to check an upload: everything
/// [`decode_mp4_with_limits`] would refuse is refused here too, and `num_frames` is the number
/// of frames that actually decode.
pub fn validate_mp4(path: &Path, limits: &DecodeLimits) -> Result<VideoInfo, MediaError> {
    let outcome = decode(
        path,
        limits,
        None,
        FrameCountPolicy::RefuseBeyondLimit,
        PixelPolicy::CountOnly,
    )?;
    let num_frames = outcome.frame_count;
    let fps = outcome.fps()?;
    let track = outcome.track;
    Ok(VideoInfo {
        width: track.width,
        height: track.height,
        fps,
        num_frames,
        duration_seconds: track.duration_seconds.unwrap_or(num_frames as f64 / fps),
        codec: track.codec,
    })
}

/// Decodes at most the first `max_frames` frames, each scaled (aspect ratio not preserved) to
/// `width` × `height` with swscale. The source must still fit [`DecodeLimits::default`]'s
/// frame size; frames after the first `max_frames` are not decoded at all.
pub fn decode_mp4_resized(
    path: &Path,
    width: usize,
    height: usize,
    max_frames: usize,
) -> Result<DecodedVideo, MediaError> {
    let limits = DecodeLimits {
        max_frames,
        ..DecodeLimits::default()
    };
    if width == 0 || height == 0 || width > u32::MAX as usize || height > u32::MAX as usize {
        return Err(MediaError::InvalidInput(format!(
            "cannot resize to {width}x{height}"
        )));
    }
    check_frame_size(width, height, &limits).map_err(|_| {
        MediaError::InvalidInput(format!("target size {width}x{height} is too large"))
    })?;
    if max_frames == 0 {
        return Err(MediaError::InvalidInput(
            "max_frames must be at least 1".into(),
        ));
    }
    let outcome = decode(
        path,
        &limits,
        Some((width, height)),
        FrameCountPolicy::StopAtLimit,
        PixelPolicy::Keep,
    )?;
    outcome.into_video()
}

/// Whether decoded pictures are converted and kept, or only counted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PixelPolicy {
    Keep,
    CountOnly,
}

/// What to do with frames beyond `DecodeLimits::max_frames`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FrameCountPolicy {
    RefuseBeyondLimit,
    StopAtLimit,
}

fn invalid(what: &'static str) -> impl Fn(ffmpeg::Error) -> MediaError {
    move |error| MediaError::InvalidVideo(format!("{what}: {error}"))
}

fn open_input(path: &Path) -> Result<format::context::Input, MediaError> {
    init()?;
    let url = local_file_url(path)?;
    // A missing or unreadable file is the caller's problem, not a bad video.
    let metadata = std::fs::metadata(path).map_err(|source| MediaError::io(path, source))?;
    if !metadata.is_file() {
        return Err(MediaError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    if metadata.len() == 0 {
        return Err(MediaError::InvalidVideo("the file is empty".into()));
    }
    let mut options = Dictionary::new();
    options.set("format_whitelist", ALLOWED_FORMATS);
    options.set("protocol_whitelist", "file");
    format::input_with_dictionary(&url, options).map_err(invalid("not a readable MP4 file"))
}

/// The video track's properties as the container declares them.
struct VideoTrack {
    index: usize,
    parameters: codec::Parameters,
    width: usize,
    height: usize,
    codec: String,
    declared_frames: Option<usize>,
    declared_fps: Option<f64>,
    duration_seconds: Option<f64>,
}

impl VideoTrack {
    fn find(input: &format::context::Input) -> Result<Self, MediaError> {
        let stream = input
            .streams()
            .best(media::Type::Video)
            .ok_or_else(|| MediaError::InvalidVideo("the file has no video track".into()))?;
        let parameters = stream.parameters();
        // Opening the decoder both proves the codec is supported and reads the frame size.
        let decoder = open_decoder(&parameters)?;
        let rate_of = |rate: Rational| {
            (rate.numerator() > 0 && rate.denominator() > 0).then(|| f64::from(rate))
        };
        let time_base = stream.time_base();
        let duration_seconds = (stream.duration() > 0 && time_base.denominator() > 0)
            .then(|| stream.duration() as f64 * f64::from(time_base));
        Ok(VideoTrack {
            index: stream.index(),
            width: decoder.width() as usize,
            height: decoder.height() as usize,
            codec: decoder
                .codec()
                .map(|codec| codec.name().to_string())
                .unwrap_or_else(|| format!("{:?}", parameters.id()).to_lowercase()),
            declared_frames: usize::try_from(stream.frames()).ok().filter(|&n| n > 0),
            declared_fps: rate_of(stream.avg_frame_rate()).or_else(|| rate_of(stream.rate())),
            duration_seconds,
            parameters,
        })
    }

    /// Frames per second: as declared, else derived from the duration.
    fn fps(&self, num_frames: usize) -> Result<f64, MediaError> {
        self.declared_fps
            .or_else(|| {
                self.duration_seconds
                    .filter(|&seconds| seconds > 0.0)
                    .map(|seconds| num_frames as f64 / seconds)
            })
            .filter(|fps| fps.is_finite() && *fps > 0.0)
            .ok_or_else(|| MediaError::InvalidVideo("the frame rate is unknown".into()))
    }
}

fn open_decoder(parameters: &codec::Parameters) -> Result<decoder::Video, MediaError> {
    let mut context = codec::context::Context::from_parameters(parameters.clone())
        .map_err(invalid("bad codec parameters"))?;
    // Let FFmpeg pick the thread count; frame threading only adds a few frames of latency.
    context.set_threading(ffmpeg::threading::Config {
        kind: ffmpeg::threading::Type::Frame,
        count: 0,
        ..Default::default()
    });
    let codec = decoder::find(parameters.id()).ok_or_else(|| {
        MediaError::InvalidVideo(format!("unsupported video codec {:?}", parameters.id()))
    })?;
    // Report damaged bitstreams instead of concealing the damage and returning pictures.
    let mut options = Dictionary::new();
    options.set("err_detect", "explode");
    context
        .decoder()
        .open_as_with(codec, options)
        .and_then(|opened| opened.video())
        .map_err(invalid("unsupported video codec"))
}

fn count_packets(
    input: &mut format::context::Input,
    track_index: usize,
) -> Result<usize, MediaError> {
    let mut packet = Packet::empty();
    let mut count = 0;
    loop {
        match packet.read(input) {
            Ok(()) => count += usize::from(packet.stream() == track_index),
            Err(ffmpeg::Error::Eof) => return Ok(count),
            Err(error) => return Err(invalid("cannot read the video data")(error)),
        }
    }
}

/// The result of a decode pass: the track, the frames (when kept) and how many decoded.
struct DecodeOutcome {
    track: VideoTrack,
    frames: Vec<Vec<u8>>,
    frame_count: usize,
    width: usize,
    height: usize,
}

impl DecodeOutcome {
    fn fps(&self) -> Result<f64, MediaError> {
        self.track
            .fps(self.track.declared_frames.unwrap_or(self.frame_count))
    }

    fn into_video(self) -> Result<DecodedVideo, MediaError> {
        let fps = self.fps()?;
        Ok(DecodedVideo {
            frames: self.frames,
            width: self.width,
            height: self.height,
            fps,
        })
    }
}

fn decode(
    path: &Path,
    limits: &DecodeLimits,
    target_size: Option<(usize, usize)>,
    policy: FrameCountPolicy,
    pixels: PixelPolicy,
) -> Result<DecodeOutcome, MediaError> {
    let mut input = open_input(path)?;
    let track = VideoTrack::find(&input)?;
    check_frame_size(track.width, track.height, limits)?;
    if let (FrameCountPolicy::RefuseBeyondLimit, Some(frames)) = (policy, track.declared_frames) {
        check_frame_count(frames, limits)?;
    }
    let mut video_decoder = open_decoder(&track.parameters)?;
    let (width, height) = target_size.unwrap_or((track.width, track.height));
    let mut sink = FrameSink::new(width, height, limits, policy, pixels)?;

    let mut packet = Packet::empty();
    let mut track_packets = 0usize;
    while !sink.is_full() {
        match packet.read(&mut input) {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            Err(error) => {
                return Err(invalid("cannot read the video data (truncated or corrupt)")(error))
            }
        }
        if packet.stream() != track.index {
            continue;
        }
        track_packets += 1;
        // The demuxer flags a sample it could only partly read (a file cut inside mdat).
        if packet.is_corrupt() {
            return Err(MediaError::InvalidVideo(format!(
                "frame {track_packets} is truncated or corrupt"
            )));
        }
        video_decoder
            .send_packet(&packet)
            .map_err(invalid("corrupt video data"))?;
        sink.take_decoded(&mut video_decoder)?;
    }
    if !sink.is_full() {
        // A file cut short still carries a complete sample table when its moov comes first;
        // reading fewer samples than it lists means the data is missing.
        if let Some(declared) = track.declared_frames {
            if track_packets < declared {
                return Err(MediaError::InvalidVideo(format!(
                    "truncated: {track_packets} of {declared} frames are present"
                )));
            }
        }
        video_decoder
            .send_eof()
            .map_err(invalid("corrupt video data"))?;
        sink.take_decoded(&mut video_decoder)?;
    }

    if sink.frame_count == 0 {
        return Err(MediaError::InvalidVideo("no frame could be decoded".into()));
    }
    Ok(DecodeOutcome {
        track,
        frame_count: sink.frame_count,
        frames: sink.frames,
        width,
        height,
    })
}

/// Converts decoded pictures to RGB24 of one fixed size and collects them within the limits
/// (or, with `PixelPolicy::CountOnly`, checks and counts them).
struct FrameSink<'a> {
    width: usize,
    height: usize,
    limits: &'a DecodeLimits,
    policy: FrameCountPolicy,
    pixels: PixelPolicy,
    frame_bytes: usize,
    scaler: Option<scaling::Context>,
    frames: Vec<Vec<u8>>,
    frame_count: usize,
}

impl<'a> FrameSink<'a> {
    fn new(
        width: usize,
        height: usize,
        limits: &'a DecodeLimits,
        policy: FrameCountPolicy,
        pixels: PixelPolicy,
    ) -> Result<Self, MediaError> {
        let frame_bytes = width
            .checked_mul(height)
            .and_then(|pixels| pixels.checked_mul(3))
            .ok_or_else(|| {
                MediaError::InvalidInput(format!("frame size {width}x{height} overflows"))
            })?;
        Ok(FrameSink {
            width,
            height,
            limits,
            policy,
            pixels,
            frame_bytes,
            scaler: None,
            frames: Vec::new(),
            frame_count: 0,
        })
    }

    /// True once no more frames are wanted (only with `StopAtLimit`).
    fn is_full(&self) -> bool {
        self.policy == FrameCountPolicy::StopAtLimit && self.frame_count >= self.limits.max_frames
    }

    /// Takes every picture the decoder has ready.
    fn take_decoded(&mut self, video_decoder: &mut decoder::Video) -> Result<(), MediaError> {
        let mut decoded = frame::Video::empty();
        loop {
            match video_decoder.receive_frame(&mut decoded) {
                Ok(()) => {}
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => {
                    return Ok(())
                }
                Err(error) => return Err(invalid("corrupt video data")(error)),
            }
            if self.is_full() {
                continue; // drain without keeping
            }
            self.admit_one_more()?;
            check_frame_size(
                decoded.width() as usize,
                decoded.height() as usize,
                self.limits,
            )?;
            if self.pixels == PixelPolicy::Keep {
                let rgb = self.convert_to_rgb(&decoded)?;
                self.frames.push(rgb);
            }
            self.frame_count += 1;
        }
    }

    fn admit_one_more(&self) -> Result<(), MediaError> {
        let count = self.frame_count + 1;
        check_frame_count(count, self.limits)?;
        if count.saturating_mul(self.frame_bytes) > self.limits.max_decoded_bytes {
            return Err(MediaError::InvalidVideo(format!(
                "decoded frames exceed the limit of {} bytes",
                self.limits.max_decoded_bytes
            )));
        }
        Ok(())
    }

    fn convert_to_rgb(&mut self, decoded: &frame::Video) -> Result<Vec<u8>, MediaError> {
        if decoded.format() == Pixel::None {
            return Err(MediaError::InvalidVideo(
                "a frame has no pixel format".into(),
            ));
        }
        let scaler = self.scaler_for(decoded)?;
        let mut rgb_frame = frame::Video::empty();
        scaler
            .run(decoded, &mut rgb_frame)
            .map_err(invalid("cannot convert a frame to RGB"))?;
        let row_bytes = self.width * 3;
        let stride = rgb_frame.stride(0);
        let data = rgb_frame.data(0);
        let mut rgb = Vec::with_capacity(self.frame_bytes);
        for row in 0..self.height {
            rgb.extend_from_slice(&data[row * stride..row * stride + row_bytes]);
        }
        Ok(rgb)
    }

    /// The converter for `decoded`'s format and size, rebuilt when they change mid-stream.
    fn scaler_for(&mut self, decoded: &frame::Video) -> Result<&mut scaling::Context, MediaError> {
        let matches = self.scaler.as_ref().is_some_and(|scaler| {
            let input = scaler.input();
            input.format == decoded.format()
                && input.width == decoded.width()
                && input.height == decoded.height()
        });
        if !matches {
            let mut scaler = scaling::Context::get(
                decoded.format(),
                decoded.width(),
                decoded.height(),
                Pixel::RGB24,
                self.width as u32,
                self.height as u32,
                scaling::Flags::BICUBIC | scaling::Flags::ACCURATE_RND,
            )
            .map_err(invalid("unsupported pixel format"))?;
            use_frame_colorimetry(&mut scaler, decoded);
            self.scaler = Some(scaler);
        }
        Ok(self.scaler.as_mut().expect("scaler was just set"))
    }
}

/// Makes swscale convert with the matrix and range the stream declares (swscale otherwise
/// assumes BT.601 limited range, which shifts colours of BT.709 or full-range uploads).
fn use_frame_colorimetry(scaler: &mut scaling::Context, decoded: &frame::Video) {
    use ffmpeg::ffi;
    let colorspace = ffi::AVColorSpace::from(decoded.color_space()) as i32;
    let declared_full_range = decoded.color_range() == ffmpeg::color::Range::JPEG;
    // SAFETY: `scaler` owns a valid SwsContext; the out-pointers are locals; the coefficient
    // table returned by sws_getCoefficients is static.
    unsafe {
        let context = scaler.as_mut_ptr();
        let mut inverse_table: *mut i32 = std::ptr::null_mut();
        let mut table: *mut i32 = std::ptr::null_mut();
        let (mut source_full, mut destination_full) = (0, 0);
        let (mut brightness, mut contrast, mut saturation) = (0, 0, 0);
        // Fails (negative) for non-YUV sources, which need no matrix.
        if ffi::sws_getColorspaceDetails(
            context,
            &mut inverse_table,
            &mut source_full,
            &mut table,
            &mut destination_full,
            &mut brightness,
            &mut contrast,
            &mut saturation,
        ) < 0
        {
            return;
        }
        // Keep swscale's own full-range detection (yuvj formats) and add the stream's tag.
        let source_full = i32::from(source_full != 0 || declared_full_range);
        ffi::sws_setColorspaceDetails(
            context,
            ffi::sws_getCoefficients(colorspace),
            source_full,
            table,
            destination_full,
            brightness,
            contrast,
            saturation,
        );
    }
}
