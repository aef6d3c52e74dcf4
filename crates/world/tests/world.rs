//! End-to-end checks of the world against the shipped grammar: parsing, rendering, the
//! held-out split, the export round trip and the evaluator on ground truth and on mismatches.

use entrovid_world::*;

fn grammar() -> Grammar {
    Grammar::builtin().expect("the shipped grammar is valid")
}

fn render_video(grammar: &Grammar, prompt: &Prompt, seed: u64) -> Video {
    let v = grammar.video;
    let frames = render(grammar, prompt, seed, v.frames, v.width, v.height).unwrap();
    Video::new(frames, v.width, v.height).unwrap()
}

fn parse(grammar: &Grammar, text: &str) -> Prompt {
    Prompt::parse(grammar, text).unwrap()
}

#[test]
fn every_grammar_prompt_parses_back_to_itself() {
    let grammar = grammar();
    let prompts = all_prompts(&grammar);
    assert_eq!(prompts.len(), 8 * 3 * 4 * 4 * 3 * 3);
    for prompt in &prompts {
        assert_eq!(&parse(&grammar, &prompt.text(&grammar)), prompt);
    }
    let example = parse(
        &grammar,
        "  A Red circle moving RIGHT on a  dark green background. ",
    );
    assert_eq!(
        example.text(&grammar),
        "a red circle moving right on a dark green background"
    );
    let sized = parse(
        &grammar,
        "a large cyan triangle moving up quickly on a navy background",
    );
    assert_eq!(
        (sized.size.as_deref(), sized.speed.as_deref()),
        (Some("large"), Some("quickly"))
    );
}

#[test]
fn prompt_lists_skip_comments_and_name_bad_lines() {
    let grammar = grammar();
    let list = "# evaluation prompts\na red circle moving right on a black background\n\n  a small blue square moving up slowly on a navy background\n";
    let prompts = parse_prompt_lines(&grammar, list).unwrap();
    assert_eq!(prompts.len(), 2);
    assert_eq!(prompts[1].speed.as_deref(), Some("slowly"));
    let error = parse_prompt_lines(
        &grammar,
        "a red circle moving right on a black background\na red blob",
    )
    .unwrap_err();
    assert!(error.to_string().contains("line 2"), "{error}");
}

#[test]
fn malformed_prompts_are_errors() {
    let grammar = grammar();
    for text in [
        "",
        "a purple circle moving right on a black background",
        "a red hexagon moving right on a black background",
        "a red circle moving sideways on a black background",
        "a red circle moving right on a pink background",
        "a red circle moving right on a black background today",
        "a red circle moving right",
        "a huge red circle moving right on a black background",
        "a red circle moving right fast on a black background",
        "a red small circle moving right on a black background",
    ] {
        assert!(Prompt::parse(&grammar, text).is_err(), "{text:?} parsed");
    }
}

#[test]
fn every_object_colour_stands_out_from_every_background() {
    let grammar = grammar();
    let distance = |a: Rgb, b: Rgb| {
        (0..3)
            .map(|c| (f64::from(a[c]) - f64::from(b[c])).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    for colour in grammar.colours.values() {
        for background in grammar.backgrounds.values() {
            assert!(distance(*colour, *background) > 2.0 * grammar.evaluation.foreground_threshold);
        }
    }
    // Distinct words must look distinct to the colour measure (at least 2.5 sigma apart).
    let sigma = grammar.evaluation.colour_sigma;
    for palette in [&grammar.colours, &grammar.backgrounds] {
        let colours: Vec<Rgb> = palette.values().copied().collect();
        for (i, a) in colours.iter().enumerate() {
            for b in &colours[i + 1..] {
                assert!(distance(*a, *b) > 2.2 * sigma, "{a:?} vs {b:?}");
            }
        }
    }
}

#[test]
fn rendering_is_deterministic_and_keeps_the_object_inside() {
    let grammar = grammar();
    let prompt = parse(
        &grammar,
        "a small yellow triangle moving left on a navy background",
    );
    let first = render_video(&grammar, &prompt, 11);
    assert_eq!(first, render_video(&grammar, &prompt, 11));
    assert_ne!(first, render_video(&grammar, &prompt, 12));
    let other_prompt = parse(
        &grammar,
        "a small yellow triangle moving left on a gray background",
    );
    assert_ne!(render_video(&grammar, &other_prompt, 11), first);

    let (w, h) = (first.width(), first.height());
    for prompt in all_prompts(&grammar).iter().step_by(11) {
        for seed in 0..3 {
            let scene = Scene::sample(&grammar, prompt, seed, 16, w, h).unwrap();
            let video = scene.render().unwrap();
            let background = grammar.backgrounds[&prompt.tuple.background];
            for frame in video.frames() {
                for x in 0..w {
                    for y in [0, h - 1] {
                        assert_eq!(
                            &frame[(y * w + x) * 3..][..3],
                            &background[..],
                            "{prompt:?} seed {seed}"
                        );
                    }
                }
            }
            let meaning = prompt.meaning(&grammar).unwrap();
            let [low, high] = meaning.size_range;
            assert!((low..=high).contains(&(scene.radius_px / w.min(h) as f64)));
            let travel = scene.velocity[0].hypot(scene.velocity[1]) * 15.0;
            let [slowest, fastest] = meaning.travel_range;
            let extent =
                meaning.direction[0].abs() * w as f64 + meaning.direction[1].abs() * h as f64;
            assert!(
                travel >= slowest * extent - 1e-9 && travel <= fastest * extent + 1e-9,
                "{prompt:?}"
            );
        }
    }
    // Larger frames and other clip lengths work too; impossible geometries are errors.
    assert_eq!(render(&grammar, &prompt, 1, 24, 128, 96).unwrap().len(), 24);
    assert!(render(&grammar, &prompt, 1, 1, 64, 64).is_err());
    assert!(render(&grammar, &prompt, 1, 16, 8, 64).is_err());
}

#[test]
fn held_out_split_is_a_fixed_fifth_that_keeps_every_word_in_training() {
    let grammar = grammar();
    let all = all_tuples(&grammar);
    let held_out = held_out_tuples(&grammar);
    assert_eq!(held_out.len(), (all.len() as f64 / 5.0).round() as usize);
    assert_eq!(held_out, held_out_tuples(&grammar));
    let train = split_tuples(&grammar, Split::Train);
    assert_eq!(train.len() + held_out.len(), all.len());
    assert!(held_out.iter().all(|t| !train.contains(t)));

    // Every word, and every pair of words, of a held-out tuple is seen in training.
    for t in &held_out {
        assert!(train
            .iter()
            .any(|u| u.colour == t.colour && u.shape == t.shape));
        assert!(train
            .iter()
            .any(|u| u.colour == t.colour && u.motion == t.motion));
        assert!(train
            .iter()
            .any(|u| u.colour == t.colour && u.background == t.background));
        assert!(train
            .iter()
            .any(|u| u.shape == t.shape && u.motion == t.motion));
        assert!(train
            .iter()
            .any(|u| u.shape == t.shape && u.background == t.background));
        assert!(train
            .iter()
            .any(|u| u.motion == t.motion && u.background == t.background));
    }

    // The split does not depend on the order of the file's keys.
    let reordered = include_str!("../../../world/grammar.json").replace(
        "\"black\": [0, 0, 0],\n    \"gray\": [110, 110, 110],",
        "\"gray\": [110, 110, 110],\n    \"black\": [0, 0, 0],",
    );
    assert_ne!(reordered, include_str!("../../../world/grammar.json"));
    assert_eq!(
        held_out_tuples(&Grammar::from_json(&reordered).unwrap()),
        held_out
    );

    // Pinned: changing the words, the salt or the hashing changes this list on purpose only.
    let listing: Vec<String> = held_out.iter().map(Tuple::key).collect();
    assert_eq!(listing[..3], PINNED_FIRST_HELD_OUT);
}

const PINNED_FIRST_HELD_OUT: [&str; 3] = [
    "blue|circle|moving right|dark green",
    "blue|circle|moving up|black",
    "blue|circle|moving up|dark green",
];

#[test]
fn sampled_prompts_are_deterministic_and_stay_in_their_split() {
    let grammar = grammar();
    let held_out = held_out_tuples(&grammar);
    let train = sample_prompts(&grammar, Split::Train, 200, 5);
    assert_eq!(train, sample_prompts(&grammar, Split::Train, 200, 5));
    assert_ne!(train, sample_prompts(&grammar, Split::Train, 200, 6));
    assert!(train.iter().all(|p| !held_out.contains(&p.tuple)));
    let test = sample_prompts(&grammar, Split::HeldOut, 200, 5);
    assert!(test.iter().all(|p| held_out.contains(&p.tuple)));
    assert!(train.iter().any(|p| p.size.is_none()) && train.iter().any(|p| p.size.is_some()));
    assert!(train.iter().any(|p| p.speed.is_none()) && train.iter().any(|p| p.speed.is_some()));
}

#[test]
fn exported_dataset_reads_back_as_the_same_renders() {
    let grammar = grammar();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("train.safetensors");
    let video = VideoSize {
        frames: 8,
        width: 32,
        height: 24,
    };
    let manifest = write_dataset(&grammar, &path, 5, 42, Split::Train, video).unwrap();
    assert_eq!(manifest.items.len(), 5);
    let videos = read_videos(&path).unwrap();
    let prompts = read_prompts(&manifest_path(&path)).unwrap();
    assert_eq!((videos.len(), prompts.len()), (5, 5));
    let held_out = held_out_tuples(&grammar);
    for ((item, clip), text) in manifest.items.iter().zip(&videos).zip(&prompts) {
        assert_eq!(&item.prompt, text);
        let prompt = Prompt::parse(&grammar, text).unwrap();
        assert_eq!(prompt, item.words);
        assert!(!held_out.contains(&prompt.tuple));
        let expected = render(&grammar, &prompt, item.seed, 8, 32, 24).unwrap();
        assert_eq!(clip.frames(), expected.as_slice());
    }
    // The header is the safetensors layout: u64 length, JSON, 8-byte aligned data.
    let bytes = std::fs::read(&path).unwrap();
    let header_length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(header_length % 8, 0);
    assert_eq!(bytes.len(), 8 + header_length + 5 * 8 * 24 * 32 * 3);
    // Same arguments, same bytes.
    let again = directory.path().join("again.safetensors");
    write_dataset(&grammar, &again, 5, 42, Split::Train, video).unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), bytes);

    // A truncated file is an error, not a panic.
    std::fs::write(&again, &bytes[..bytes.len() - 1]).unwrap();
    assert!(read_videos(&again).is_err());
    std::fs::write(&again, [1u8, 2, 3]).unwrap();
    assert!(read_videos(&again).is_err());
}

#[test]
fn invalid_grammars_are_rejected() {
    let shipped = include_str!("../../../world/grammar.json");
    for (from, to) in [
        ("\"circle\", \"square\"", "\"circle\", \"hexagon\""),
        ("\"{motion}\", \"{speed?}\"", "\"{speed?}\""),
        ("\"moving left\": [-1, 0]", "\"moving left\": [0, 0]"),
        ("\"fraction\": 0.2", "\"fraction\": 1.5"),
        ("\"red\": [220, 40, 40]", "\"Red\": [220, 40, 40]"),
        ("\"colour_sigma\": 35.0", "\"colour_sigma\": -1.0"),
    ] {
        let broken = shipped.replace(from, to);
        assert_ne!(broken, shipped, "{from}");
        assert!(Grammar::from_json(&broken).is_err(), "{to}");
    }
    assert!(Grammar::from_json("{").is_err());
}
