//! The evaluator on rendered ground truth (scores near 1) and on prompts that contradict the
//! video in one attribute (that attribute's measure low), plus degraded videos.

use entrovid_world::*;

fn grammar() -> Grammar {
    Grammar::builtin().expect("the shipped grammar is valid")
}

fn render_video(grammar: &Grammar, prompt: &Prompt, seed: u64) -> Video {
    let v = grammar.video;
    Video::new(
        render(grammar, prompt, seed, v.frames, v.width, v.height).unwrap(),
        v.width,
        v.height,
    )
    .unwrap()
}

/// A spread of ground-truth clips: prompts from every split, each rendered under its own seed.
fn ground_truth(grammar: &Grammar, count: usize) -> Vec<(Prompt, Video)> {
    sample_prompts(grammar, Split::All, count, 2024)
        .into_iter()
        .enumerate()
        .map(|(i, prompt)| {
            let video = render_video(grammar, &prompt, 1000 + i as u64);
            (prompt, video)
        })
        .collect()
}

/// The prompt with one attribute swapped for each other word of that slot.
fn with_other_words(grammar: &Grammar, prompt: &Prompt, kind: SlotKind) -> Vec<Prompt> {
    let current = prompt.slot(kind).map(str::to_string);
    grammar
        .vocabulary(kind)
        .into_iter()
        .filter(|word| Some(word.to_string()) != current)
        .map(|word| {
            let mut other = prompt.clone();
            let word = word.to_string();
            match kind {
                SlotKind::Colour => other.tuple.colour = word,
                SlotKind::Shape => other.tuple.shape = word,
                SlotKind::Motion => other.tuple.motion = word,
                SlotKind::Background => other.tuple.background = word,
                SlotKind::Size => other.size = Some(word),
                SlotKind::Speed => other.speed = Some(word),
            }
            other
        })
        .collect()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

#[test]
fn ground_truth_scores_near_one_and_mismatches_score_low() {
    let grammar = grammar();
    let clips = ground_truth(&grammar, 96);
    let mut matched = Vec::new();
    let mut mismatched: Vec<(SlotKind, Scores)> = Vec::new();
    for (prompt, video) in &clips {
        let observation = analyse(&grammar, video).unwrap();
        let scores = score(&grammar, &observation, prompt).unwrap();
        assert_eq!(scores, evaluate(&grammar, video, prompt).unwrap());
        assert!(
            scores.adherence > 0.85,
            "{} scored {scores:?}",
            prompt.text(&grammar)
        );
        matched.push(scores);
        for kind in SlotKind::IN_MEASURE_ORDER {
            if kind.is_optional() && prompt.slot(kind).is_none() {
                continue;
            }
            for other in with_other_words(&grammar, prompt, kind) {
                mismatched.push((kind, score(&grammar, &observation, &other).unwrap()));
            }
        }
    }
    let summary = summarise(&matched);
    for measure in &summary.measures {
        println!(
            "matched {:<10} mean {:.4} ci95 {:?} (n = {})",
            measure.name, measure.mean, measure.ci95, measure.n
        );
    }
    assert!(summary.measure("adherence").unwrap().mean >= 0.95);
    for name in MEASURES {
        assert!(summary.measure(name).unwrap().mean >= 0.93, "{name}");
    }

    let of_kind = |kind: SlotKind, pick: fn(&Scores) -> f64| -> Vec<f64> {
        mismatched
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, s)| pick(s))
            .collect()
    };
    let matched_of = |pick: fn(&Scores) -> f64| mean(&matched.iter().map(pick).collect::<Vec<_>>());
    let report = |label: &str, values: &[f64]| {
        let max = values.iter().copied().fold(0.0, f64::max);
        println!(
            "{label:<28} mean {:.4} max {:.4} (n = {})",
            mean(values),
            max,
            values.len()
        );
        (mean(values), max)
    };
    let (colour_mean, colour_max) = report(
        "wrong colour -> colour",
        &of_kind(SlotKind::Colour, |s| s.colour),
    );
    let (motion_mean, motion_max) = report(
        "wrong motion -> motion",
        &of_kind(SlotKind::Motion, |s| s.motion),
    );
    let (shape_mean, shape_max) = report(
        "wrong shape -> shape",
        &of_kind(SlotKind::Shape, |s| s.shape),
    );
    let (background_mean, background_max) = report(
        "wrong background -> background",
        &of_kind(SlotKind::Background, |s| s.background),
    );
    let (size_mean, _) = report(
        "wrong size -> size",
        &of_kind(SlotKind::Size, |s| s.size.unwrap()),
    );
    let (speed_mean, _) = report(
        "wrong speed -> speed",
        &of_kind(SlotKind::Speed, |s| s.speed.unwrap()),
    );
    let all_adherence: Vec<f64> = mismatched.iter().map(|(_, s)| s.adherence).collect();
    let (adherence_mean, _) = report("any one mismatch -> adherence", &all_adherence);
    assert!(colour_mean < 0.05 && colour_max < 0.2);
    assert!(motion_mean < 0.05 && motion_max < 0.2);
    assert!(background_mean < 0.05 && background_max < 0.2);
    assert!(shape_mean < 0.2 && shape_max < 0.6 && shape_mean < matched_of(|s| s.shape) - 0.7);
    assert!(size_mean < 0.1);
    assert!(speed_mean < 0.1);
    assert!(adherence_mean < 0.35);

    // Prompts drawn independently of the video mostly disagree in several words at once.
    let random_prompts = sample_prompts(&grammar, Split::All, clips.len(), 77);
    let unrelated: Vec<f64> = clips
        .iter()
        .zip(&random_prompts)
        .filter(|((prompt, _), other)| prompt.tuple != other.tuple)
        .map(|((_, video), other)| evaluate(&grammar, video, other).unwrap().adherence)
        .collect();
    let (unrelated_mean, _) = report("unrelated prompt -> adherence", &unrelated);
    assert!(unrelated_mean < 0.1);
}

#[test]
fn shuffled_frames_lose_temporal_consistency_and_motion() {
    let grammar = grammar();
    let prompt = Prompt::parse(
        &grammar,
        "a large white square moving down quickly on a gray background",
    )
    .unwrap();
    let video = render_video(&grammar, &prompt, 3);
    let original = evaluate(&grammar, &video, &prompt).unwrap();
    let mut frames = video.clone().into_frames();
    // A fixed derangement that breaks the constant-velocity path.
    let order = [7, 2, 12, 0, 15, 5, 10, 3, 13, 1, 8, 14, 4, 11, 6, 9];
    let shuffled: Vec<Vec<u8>> = order
        .iter()
        .map(|&i| std::mem::take(&mut frames[i]))
        .collect();
    let shuffled = Video::new(shuffled, video.width(), video.height()).unwrap();
    let scores = evaluate(&grammar, &shuffled, &prompt).unwrap();
    println!("original {original:?}\nshuffled {scores:?}");
    assert!(original.temporal > 0.95);
    assert!(scores.temporal < 0.5);
    assert!(scores.motion < original.motion);
    // The frames themselves are unchanged, so appearance measures stay high.
    assert!(scores.colour > 0.95 && scores.shape > 0.9 && scores.background > 0.95);
}

/// Separable box blur of radius `radius` on every channel.
fn blur(video: &Video, radius: usize) -> Video {
    let (w, h) = (video.width(), video.height());
    let frames = video
        .frames()
        .iter()
        .map(|frame| {
            let mut out = vec![0u8; frame.len()];
            for y in 0..h {
                for x in 0..w {
                    for c in 0..3 {
                        let (mut sum, mut n) = (0u32, 0u32);
                        for ny in y.saturating_sub(radius)..(y + radius + 1).min(h) {
                            for nx in x.saturating_sub(radius)..(x + radius + 1).min(w) {
                                sum += u32::from(frame[(ny * w + nx) * 3 + c]);
                                n += 1;
                            }
                        }
                        out[(y * w + x) * 3 + c] = (sum / n) as u8;
                    }
                }
            }
            out
        })
        .collect();
    Video::new(frames, w, h).unwrap()
}

#[test]
fn blurred_video_is_less_sharp() {
    let grammar = grammar();
    let prompt = Prompt::parse(
        &grammar,
        "a large orange circle moving left on a navy background",
    )
    .unwrap();
    let video = render_video(&grammar, &prompt, 9);
    let sharp = evaluate(&grammar, &video, &prompt).unwrap().sharpness;
    let soft = evaluate(&grammar, &blur(&video, 1), &prompt)
        .unwrap()
        .sharpness;
    let softer = evaluate(&grammar, &blur(&video, 3), &prompt)
        .unwrap()
        .sharpness;
    println!("sharpness: original {sharp:.3}, blur 3x3 {soft:.3}, blur 7x7 {softer:.3}");
    assert!(sharp > 0.95);
    assert!(soft < 0.8 && softer < soft && softer < 0.4);
}

/// Adds uniform noise of ±`amplitude` to every channel (a fixed pattern, no randomness needed).
fn add_noise(video: &Video, amplitude: i32) -> Video {
    let frames = video
        .frames()
        .iter()
        .enumerate()
        .map(|(f, frame)| {
            frame
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let hash =
                        (i as u64 + 7919 * f as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
                    let offset = (hash % (2 * amplitude as u64 + 1)) as i32 - amplitude;
                    (i32::from(v) + offset).clamp(0, 255) as u8
                })
                .collect()
        })
        .collect();
    Video::new(frames, video.width(), video.height()).unwrap()
}

#[test]
fn mild_noise_keeps_adherence_high() {
    let grammar = grammar();
    let clips = ground_truth(&grammar, 24);
    let noisy: Vec<Scores> = clips
        .iter()
        .map(|(prompt, video)| evaluate(&grammar, &add_noise(video, 12), prompt).unwrap())
        .collect();
    let summary = summarise(&noisy);
    for measure in &summary.measures {
        println!("noisy {:<10} mean {:.4}", measure.name, measure.mean);
    }
    assert!(summary.measure("adherence").unwrap().mean > 0.9);
    assert!(summary.measure("temporal").unwrap().mean > 0.9);
}

#[test]
fn an_empty_video_adheres_to_nothing() {
    let grammar = grammar();
    let prompt = Prompt::parse(
        &grammar,
        "a small red circle moving up slowly on a black background",
    )
    .unwrap();
    let black = Video::new(vec![vec![0u8; 64 * 64 * 3]; 16], 64, 64).unwrap();
    let scores = evaluate(&grammar, &black, &prompt).unwrap();
    assert!(scores.background > 0.99);
    assert_eq!(
        (
            scores.colour,
            scores.shape,
            scores.motion,
            scores.size,
            scores.speed,
            scores.sharpness,
            scores.adherence
        ),
        (0.0, 0.0, 0.0, Some(0.0), Some(0.0), 0.0, 0.0)
    );
}

#[test]
fn malformed_videos_are_errors() {
    assert!(Video::new(vec![vec![0u8; 64 * 64 * 3]; 16], 64, 63).is_err());
    assert!(Video::new(vec![vec![0u8; 10]; 16], 64, 64).is_err());
    assert!(Video::new(vec![vec![0u8; 64 * 64 * 3]; 1], 64, 64).is_err());
}
