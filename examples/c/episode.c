/* Wall episodes through qwm's C API, with the control loop on this side: the simulator hands
 * frames and proprioception to the controller, the controller hands back actions.
 *
 *   episode MODEL_DIR SEED EPISODES MAX_ITER [option flags as for `qwm serve`...]
 *
 * Episode i reproduces episode i of `qwm plan --model MODEL_DIR --seed SEED --max-iter MAX_ITER`
 * with the same option flags. One line per episode on stdout:
 *   episode I success 0|1 mpc_steps N final_state V V ...
 * Build: cc examples/c/episode.c -Iinclude -Ltarget/release -l:libqwmc.a -lm -lpthread -ldl
 */
#include "qwm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                                      \
    do {                                                                                 \
        QwmStatus s_ = (call);                                                           \
        if (s_ != QWM_STATUS_OK) {                                                       \
            fprintf(stderr, "%s failed (status %d): %s\n", #call, (int)s_, qwm_last_error()); \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL_DIR SEED EPISODES MAX_ITER [flags...]\n", argv[0]);
        return 2;
    }
    const char *model = argv[1];
    unsigned long long seed = strtoull(argv[2], NULL, 10);
    int episodes = atoi(argv[3]);
    int max_iter = atoi(argv[4]);

    /* The planner seed is an option like the others. */
    const char **flags = malloc(sizeof(char *) * (size_t)(argc - 5 + 2));
    size_t nflags = 0;
    flags[nflags++] = "--seed";
    flags[nflags++] = argv[2];
    for (int i = 5; i < argc; i++) flags[nflags++] = argv[i];

    QwmController *ctl = NULL;
    CHECK(qwm_controller_new(model, flags, nflags, &ctl));
    QwmControllerInfo info;
    CHECK(qwm_controller_info(ctl, &info));
    QwmEnv *env = NULL;
    CHECK(qwm_env_new("wall", &env));

    size_t side = info.image_size;
    size_t frame_len = side * side * 3;
    unsigned char *frame = malloc(frame_len);
    float proprio[64] = {0}, state[64];
    memset(frame, 0, frame_len);
    size_t n_actions = info.actions_per_act * info.action_dim;
    float *actions = malloc(sizeof(float) * n_actions);
    size_t got, plen;

    /* A buffer too small is refused with the size it needs. */
    if (qwm_controller_act(ctl, frame, side, side, proprio, info.proprio_dim, actions, 1, &got,
                           NULL) != QWM_STATUS_BUFFER_TOO_SMALL || got != n_actions) {
        fprintf(stderr, "expected BUFFER_TOO_SMALL with %zu needed, got %zu\n", n_actions, got);
        return 1;
    }
    /* Acting before a goal is set is an ordering error with a message. */
    if (qwm_controller_act(ctl, frame, side, side, proprio, info.proprio_dim, actions, n_actions,
                           &got, NULL) != QWM_STATUS_BAD_STATE) {
        fprintf(stderr, "expected BAD_STATE before set_goal\n");
        return 1;
    }
    fprintf(stderr, "act before set_goal: %s\n", qwm_last_error());

    for (int ep = 0; ep < episodes; ep++) {
        CHECK(qwm_controller_reset(ctl, ep));
        CHECK(qwm_env_reset(env, qwm_task_seed(seed, (uint64_t)ep)));
        CHECK(qwm_env_render(env, 1, side, frame, frame_len, &got));
        CHECK(qwm_env_proprio(env, 1, proprio, 64, &plen));
        CHECK(qwm_controller_set_goal(ctl, frame, side, side, proprio, plen));
        bool success = false;
        int steps = 0;
        while (steps < max_iter && !success) {
            CHECK(qwm_env_render(env, 0, side, frame, frame_len, &got));
            CHECK(qwm_env_proprio(env, 0, proprio, 64, &plen));
            float objective;
            CHECK(qwm_controller_act(ctl, frame, side, side, proprio, plen, actions, n_actions,
                                     &got, &objective));
            steps++;
            for (size_t k = 0; k < got / info.action_dim; k++) {
                float distance;
                CHECK(qwm_env_step(env, actions + k * info.action_dim, info.action_dim, &success,
                                   &distance));
            }
        }
        size_t ns;
        CHECK(qwm_env_state(env, state, 64, &ns));
        printf("episode %d success %d mpc_steps %d final_state", ep, success ? 1 : 0, steps);
        for (size_t i = 0; i < ns; i++) printf(" %.9g", state[i]);
        printf("\n");
    }
    char stats[4096];
    size_t need;
    CHECK(qwm_controller_stats_json(ctl, stats, sizeof stats, &need));
    fprintf(stderr, "stats %s\n", stats);
    qwm_env_free(env);
    qwm_controller_free(ctl);
    free(actions);
    free(frame);
    free(flags);
    return 0;
}
