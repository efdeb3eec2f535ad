using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;
using static PortAzure.Tests.Dispatcher.DeliveryOutcomeTests;

namespace PortAzure.Tests.Dispatcher;

public class DeadLetterTests
{
    [Fact]
    public async Task DeadLetter_KeepsBodyTargetAttemptsAndHint()
    {
        await using var relay = await Relay.StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 404, body = "VS800075: The project with id 'x' does not exist" } } });
        var body = TestRuns.Body(TestRuns.NewRunId());
        using var response = await relay.SendRunAsync(body);
        var deliveryId = (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("deliveryId").GetString()!;

        await WaitForStateAsync(relay, deliveryId, DeliveryStates.DeadLettered);

        Assert.Equal(body, (byte[])(await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.Body))!);
        using var list = relay.Operator(HttpMethod.Get, "/api/deadletters");
        using var page = await relay.Ingress.Client.SendAsync(list);
        var json = await page.Content.ReadFromJsonAsync<JsonElement>();
        var item = Assert.Single(json.GetProperty("items").EnumerateArray());
        Assert.Equal(deliveryId, item.GetProperty("deliveryId").GetString());
        Assert.Equal(TestRuns.Org, item.GetProperty("org").GetString());
        Assert.Equal(TestRuns.Webhook, item.GetProperty("webhook").GetString());
        var attempt = Assert.Single(item.GetProperty("attemptHistory").EnumerateArray());
        Assert.Equal(404, attempt.GetProperty("status").GetInt32());
        Assert.Contains("VS800075", attempt.GetProperty("excerpt").GetString(), StringComparison.Ordinal);
        Assert.True(attempt.GetProperty("at").GetDateTimeOffset() > DateTimeOffset.UtcNow.AddMinutes(-1));
        Assert.Contains("organisation name", item.GetProperty("hint").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Replay_OfARunWhoseLastTryTimedOut_ItsNextDeadLetterStillSaysToCheckThePipelinesRuns()
    {
        // The only try timed out (Azure may have started the pipeline), then a replay is refused 404: the second dead letter
        // must still say so. Only retries remembered it; a lost answer on the try that dead-lettered the run was forgotten.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:RequestTimeoutSeconds"] = "0.5";
            c["Dispatcher:Retry:MaxAttempts"] = "1";
        });
        await relay.EmulatorApi.ScriptAsync(new { responses = new object[] { new { status = 200, delayMs = 3000 }, new { status = 404 }, new { status = 404 } } });
        var deliveryId = await SendAsync(relay);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.DeadLettered);

        using var replay = relay.Operator(HttpMethod.Post, $"/api/deadletters/{deliveryId}/replay");
        using var answer = await relay.Ingress.Client.SendAsync(replay);
        Assert.Equal(HttpStatusCode.Accepted, answer.StatusCode);
        await Eventually.HoldsAsync(async () => (await DeliveryAsync(relay, deliveryId)) is var view
            && view.GetProperty("state").GetString() == DeliveryStates.DeadLettered && view.GetProperty("lastStatus").ValueKind == JsonValueKind.Number,
            TimeSpan.FromSeconds(45), "the replay dead-lettered with 404");

        var hint = (await DeliveryAsync(relay, deliveryId)).GetProperty("hint").GetString();
        Assert.StartsWith("Azure DevOps answered 404", hint, StringComparison.Ordinal);
        Assert.EndsWith("check its runs before replaying.", hint, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Replay_OneDeadLetter_IsDeliveredOnceUnderTheSameId()
    {
        await using var relay = await Relay.StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 401 } } });
        var deliveryId = await SendAsync(relay);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.DeadLettered);

        using var replay = relay.Operator(HttpMethod.Post, $"/api/deadletters/{deliveryId}/replay");
        using var answer = await relay.Ingress.Client.SendAsync(replay);
        Assert.Equal(HttpStatusCode.Accepted, answer.StatusCode);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);
        await Task.Delay(500);

        var delivered = await relay.EmulatorApi.DeliveredAsync();
        Assert.Equal(deliveryId, Assert.Single(delivered).Header("Idempotency-Key"));
        Assert.Equal(0, await relay.Db.SortedSetLengthAsync(RedisKeys.DeadLetters));
        Assert.False(await relay.Db.HashExistsAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.Body));
        var view = await DeliveryAsync(relay, deliveryId);
        Assert.Equal(1, view.GetProperty("replays").GetInt32());

        // A client retrying a replay whose answer it lost learns where the delivery is.
        using var again = relay.Operator(HttpMethod.Post, $"/api/deadletters/{deliveryId}/replay");
        using var notDead = await relay.Ingress.Client.SendAsync(again);
        Assert.Equal(HttpStatusCode.Conflict, notDead.StatusCode);
        var problem = await notDead.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal("not_a_deadletter", problem.GetProperty("reason").GetString());
        Assert.Contains("'delivered'", problem.GetProperty("detail").GetString(), StringComparison.Ordinal);
        Assert.Single(await relay.EmulatorApi.DeliveredAsync());
    }

    [Fact]
    public async Task ReplayAll_DamagedRecordAtTheHead_IsPassedTheOthersAreReplayedAndItCanBeDiscarded()
    {
        // A record that is not a hash cannot be replayed: an error there would stop every batch replay at it, for good.
        await using var relay = await Relay.StartAsync();
        var ids = new List<string>();
        for (var i = 0; i < 3; i++)
        {
            var id = "d_" + Guid.NewGuid().ToString("N");
            ids.Add(id);
            await DeadLetterRecords.AddAsync(relay.Db, id, i + 1, TestRuns.Body(TestRuns.NewRunId()),
                new HashEntry(DeliveryRecord.ReceivedAt, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()));
        }
        // SET replaces the hash whatever its type: the record is now a string.
        await relay.Db.StringSetAsync(RedisKeys.Delivery(ids[0]), "damaged");

        using var replay = relay.Operator(HttpMethod.Post, "/api/deadletters/replay");
        using var answer = await relay.Ingress.Client.SendAsync(replay);
        using var discard = relay.Operator(HttpMethod.Delete, $"/api/deadletters/{ids[0]}");
        using var discarded = await relay.Ingress.Client.SendAsync(discard);

        Assert.Equal(HttpStatusCode.OK, answer.StatusCode);
        var json = await answer.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal(ids[1..], json.GetProperty("deliveryIds").EnumerateArray().Select(e => e.GetString()!).ToList());
        Assert.False(json.TryGetProperty("incomplete", out var incomplete) && incomplete.ValueKind == JsonValueKind.True);
        Assert.True(discarded.IsSuccessStatusCode, $"DELETE answered {(int)discarded.StatusCode}");
        Assert.Equal(0, await relay.Db.SortedSetLengthAsync(RedisKeys.DeadLetters));
        Assert.False(await relay.Db.KeyExistsAsync(RedisKeys.Delivery(ids[0])));
        await WaitForStateAsync(relay, ids[1], DeliveryStates.Delivered);
        await WaitForStateAsync(relay, ids[2], DeliveryStates.Delivered);
    }

    [Fact]
    public async Task ListAndGet_DamagedRecordOrAttempts_ShowItAsDamagedInsteadOfFailing()
    {
        // One record that is not a hash used to fail every page of dead letters that held it, with a 500.
        await using var relay = await Relay.StartAsync();
        var ids = Enumerable.Range(0, 3).Select(_ => "d_" + Guid.NewGuid().ToString("N")).ToList();
        for (var i = 0; i < ids.Count; i++)
        {
            await DeadLetterRecords.AddAsync(relay.Db, ids[i], i + 1, TestRuns.Body(TestRuns.NewRunId()));
        }
        // SET replaces the hash whatever its type: the record is now a string.
        await relay.Db.StringSetAsync(RedisKeys.Delivery(ids[0]), "damaged");
        // The second's attempts: one readable, one not JSON. The third's attempts key is not a list.
        await relay.Db.ListRightPushAsync(RedisKeys.Attempts(ids[1]),
            [DeadLetterRecords.Attempt(1), "{not json"]);
        await relay.Db.StringSetAsync(RedisKeys.Attempts(ids[2]), "damaged");

        using var list = relay.Operator(HttpMethod.Get, "/api/deadletters");
        using var page = await relay.Ingress.Client.SendAsync(list);
        using var get = relay.Operator(HttpMethod.Get, $"/api/deliveries/{ids[0]}");
        using var one = await relay.Ingress.Client.SendAsync(get);

        Assert.Equal(HttpStatusCode.OK, page.StatusCode);
        var items = (await page.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("items").EnumerateArray().ToList();
        Assert.Equal(ids, items.Select(i => i.GetProperty("deliveryId").GetString()!).ToList());
        Assert.Equal(["damaged", DeliveryStates.DeadLettered, DeliveryStates.DeadLettered], items.Select(i => i.GetProperty("state").GetString()!));
        Assert.Contains($"DELETE /api/deadletters/{ids[0]}", items[0].GetProperty("hint").GetString(), StringComparison.Ordinal);
        Assert.Equal(500, Assert.Single(items[1].GetProperty("attemptHistory").EnumerateArray()).GetProperty("status").GetInt32());
        Assert.Empty(items[2].GetProperty("attemptHistory").EnumerateArray());
        Assert.Equal(HttpStatusCode.OK, one.StatusCode);
        Assert.Equal("damaged", (await one.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("state").GetString());
    }

    [Fact]
    public async Task List_DamagedTimeAndAMemberThatIsNotAnId_PagesThroughEveryEntry()
    {
        await using var relay = await Relay.StartAsync();
        var first = "d_" + Guid.NewGuid().ToString("N");
        var last = "d_" + Guid.NewGuid().ToString("N");
        await DeadLetterRecords.AddAsync(relay.Db, first, 1, TestRuns.Body(TestRuns.NewRunId()), new HashEntry(DeliveryRecord.UpdatedAt, long.MaxValue));
        await relay.Db.SortedSetAddAsync(RedisKeys.DeadLetters, "not-a-delivery-id", 2);
        await DeadLetterRecords.AddAsync(relay.Db, last, 3, TestRuns.Body(TestRuns.NewRunId()));

        var seen = new List<string>();
        string? cursor = null;
        for (var page = 0; page < 5; page++)
        {
            using var request = relay.Operator(HttpMethod.Get, "/api/deadletters?limit=1" + (cursor is null ? "" : "&cursor=" + Uri.EscapeDataString(cursor)));
            using var response = await relay.Ingress.Client.SendAsync(request);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var json = await response.Content.ReadFromJsonAsync<JsonElement>();
            foreach (var item in json.GetProperty("items").EnumerateArray())
            {
                seen.Add(item.GetProperty("deliveryId").GetString()!);
                if (item.GetProperty("deliveryId").GetString() == first)
                {
                    Assert.Equal(JsonValueKind.Null, item.GetProperty("updatedAt").ValueKind);
                }
            }
            cursor = json.GetProperty("nextCursor").GetString();
            if (cursor is null)
            {
                break;
            }
        }

        Assert.Null(cursor);
        // The member that is no delivery id has no record: shown as damaged (it was left out, though counted), and removable.
        Assert.Equal([first, "not-a-delivery-id", last], seen);
        using var delete = relay.Operator(HttpMethod.Delete, "/api/deadletters/not-a-delivery-id");
        using var deleted = await relay.Ingress.Client.SendAsync(delete);
        Assert.Equal(HttpStatusCode.NoContent, deleted.StatusCode);
        Assert.Null(await relay.Db.SortedSetScoreAsync(RedisKeys.DeadLetters, "not-a-delivery-id"));
    }

    [Fact]
    public async Task List_DeadLetterWithoutRecord_IsShownAsDamagedAndCanBeDeleted()
    {
        await using var relay = await Relay.StartAsync();
        var orphan = "d_" + Guid.NewGuid().ToString("N");
        await relay.Db.SortedSetAddAsync(RedisKeys.DeadLetters, orphan, 1);

        using var list = relay.Operator(HttpMethod.Get, "/api/deadletters");
        using var listed = await relay.Ingress.Client.SendAsync(list);
        var item = Assert.Single((await listed.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("items").EnumerateArray());
        Assert.Equal((orphan, "damaged"), (item.GetProperty("deliveryId").GetString(), item.GetProperty("state").GetString()));

        using var delete = relay.Operator(HttpMethod.Delete, $"/api/deadletters/{orphan}");
        using var deleted = await relay.Ingress.Client.SendAsync(delete);
        Assert.Equal(HttpStatusCode.NoContent, deleted.StatusCode);
        Assert.Equal(0, await relay.Db.SortedSetLengthAsync(RedisKeys.DeadLetters));
    }

    [Fact]
    public async Task Replay_LongAttemptLog_KeepsTheLatestHundredAndAddsTheNewRound()
    {
        // Replayed again and again, a dead letter's log grew without end, and every page of dead letters read it whole.
        await using var relay = await Relay.StartAsync();
        var id = "d_" + Guid.NewGuid().ToString("N");
        await DeadLetterRecords.AddAsync(relay.Db, id, 1, TestRuns.Body(TestRuns.NewRunId()));
        await relay.Db.ListRightPushAsync(RedisKeys.Attempts(id), Enumerable.Range(1, 250).Select(i => DeadLetterRecords.Attempt(i)).ToArray());

        using var replay = relay.Operator(HttpMethod.Post, $"/api/deadletters/{id}/replay");
        using var answer = await relay.Ingress.Client.SendAsync(replay);
        Assert.Equal(HttpStatusCode.Accepted, answer.StatusCode);
        await WaitForStateAsync(relay, id, DeliveryStates.Delivered);

        var log = await relay.Db.ListRangeAsync(RedisKeys.Attempts(id));
        Assert.Equal(101, log.Length);
        Assert.Equal(151, JsonDocument.Parse((string)log[0]!).RootElement.GetProperty("attempt").GetInt32());
        Assert.Equal(250, JsonDocument.Parse((string)log[99]!).RootElement.GetProperty("attempt").GetInt32());
    }

    [Fact]
    public async Task List_LongAttemptLog_ShowsTheNewestTenWhileTheDeliveryShowsAll()
    {
        // A page of 500 dead letters read each one's log whole (up to 200 attempts after replays): tens of MB per page.
        await using var relay = await Relay.StartAsync();
        var id = "d_" + Guid.NewGuid().ToString("N");
        await DeadLetterRecords.AddAsync(relay.Db, id, 1, TestRuns.Body(TestRuns.NewRunId()));
        await relay.Db.ListRightPushAsync(RedisKeys.Attempts(id), Enumerable.Range(1, 25).Select(i => DeadLetterRecords.Attempt(i)).ToArray());

        using var list = relay.Operator(HttpMethod.Get, "/api/deadletters");
        using var listed = await relay.Ingress.Client.SendAsync(list);
        using var one = relay.Operator(HttpMethod.Get, $"/api/deliveries/{id}");
        using var shown = await relay.Ingress.Client.SendAsync(one);

        var item = Assert.Single((await listed.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("items").EnumerateArray());
        Assert.Equal(Enumerable.Range(16, 10), item.GetProperty("attemptHistory").EnumerateArray().Select(a => a.GetProperty("attempt").GetInt32()));
        Assert.Equal(25, (await shown.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("attemptHistory").GetArrayLength());
    }

    [Fact]
    public async Task ReplayAll_FirstReplayFails_Answers200WithNoneAndWhereItStopped()
    {
        // Not a 503: that says none was replayed and a retry is safe, while a timed-out replay may have run. (A damaged
        // stream before any replay is no such doubt: OperatorApiTests.ReplayAll_StreamOfAnotherType_….)
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var dispatcher = await relay.AddDispatcherAsync(services: services => FaultyRedis.FailScripts(services,
            script => DispatcherScripts.IsReplay(script) ? ScriptFault.NotRun : ScriptFault.None));
        var id = "d_" + Guid.NewGuid().ToString("N");
        await DeadLetterRecords.AddAsync(relay.Db, id, 1, TestRuns.Body(TestRuns.NewRunId()));

        using var replay = relay.Operator(HttpMethod.Post, "/api/deadletters/replay");
        using var answer = await dispatcher.Client.SendAsync(replay);

        await AssertIncompleteReplayAsync(answer, [], stoppedAt: id);
        Assert.Equal(id, (string?)Assert.Single(await relay.Db.SortedSetRangeByRankAsync(RedisKeys.DeadLetters)));
    }

    [Fact]
    public async Task ReplayAll_SecondReplayFails_Answers200WithTheFirstAndWhereItStopped()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var replays = 0;
        var dispatcher = await relay.AddDispatcherAsync(services: services => FaultyRedis.FailScripts(services,
            script => DispatcherScripts.IsReplay(script) && Interlocked.Increment(ref replays) == 2 ? ScriptFault.NotRun : ScriptFault.None));
        var first = "d_" + Guid.NewGuid().ToString("N");
        var second = "d_" + Guid.NewGuid().ToString("N");
        await DeadLetterRecords.AddAsync(relay.Db, first, 1, TestRuns.Body(TestRuns.NewRunId()));
        await DeadLetterRecords.AddAsync(relay.Db, second, 2, TestRuns.Body(TestRuns.NewRunId()));

        using var replay = relay.Operator(HttpMethod.Post, "/api/deadletters/replay");
        using var answer = await dispatcher.Client.SendAsync(replay);

        // Not a 503: the first was replayed, and a retry of the whole call would replay up to `limit` more.
        await AssertIncompleteReplayAsync(answer, [first], stoppedAt: second);
        Assert.Equal(second, (string?)Assert.Single(await relay.Db.SortedSetRangeByRankAsync(RedisKeys.DeadLetters)));
    }

    [Fact]
    public async Task ReplayAll_PageReadFailsAfterAReplay_Answers200WithThoseReplayedAndNoneInDoubt()
    {
        // The oldest cannot be replayed (no body): a batch of two reads a second page after it, and that read fails.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var pages = 0;
        var dispatcher = await relay.AddDispatcherAsync(services: services => FaultyRedis.FailCalls(services,
            call => call.Method == nameof(IDatabase.SortedSetRangeByScoreAsync) && Interlocked.Increment(ref pages) == 2 ? ScriptFault.NotRun : ScriptFault.None));
        var stuck = "d_" + Guid.NewGuid().ToString("N");
        var replayable = "d_" + Guid.NewGuid().ToString("N");
        var third = "d_" + Guid.NewGuid().ToString("N");
        await DeadLetterRecords.AddAsync(relay.Db, stuck, 1, TestRuns.Body(TestRuns.NewRunId()));
        await relay.Db.HashDeleteAsync(RedisKeys.Delivery(stuck), DeliveryRecord.Body);
        await DeadLetterRecords.AddAsync(relay.Db, replayable, 2, TestRuns.Body(TestRuns.NewRunId()));
        await DeadLetterRecords.AddAsync(relay.Db, third, 3, TestRuns.Body(TestRuns.NewRunId()));

        using var replay = relay.Operator(HttpMethod.Post, "/api/deadletters/replay?limit=2");
        using var answer = await dispatcher.Client.SendAsync(replay);

        Assert.Equal(2, pages);
        // Failed between two replays: none is in doubt.
        await AssertIncompleteReplayAsync(answer, [replayable], stoppedAt: null);
        Assert.Equal([stuck, third], (await relay.Db.SortedSetRangeByRankAsync(RedisKeys.DeadLetters)).Select(v => (string?)v));
    }

    /// <summary>A batch replay that stopped at a Redis failure: 200, what it replayed, and the delivery in doubt (if any).</summary>
    private static async Task AssertIncompleteReplayAsync(HttpResponseMessage answer, string[] replayed, string? stoppedAt)
    {
        Assert.Equal(HttpStatusCode.OK, answer.StatusCode);
        var json = await answer.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal(replayed.Length, json.GetProperty("replayed").GetInt32());
        Assert.Equal(replayed, json.GetProperty("deliveryIds").EnumerateArray().Select(e => e.GetString()!));
        Assert.True(json.GetProperty("incomplete").GetBoolean());
        Assert.Equal(stoppedAt, json.TryGetProperty("stoppedAt", out var at) && at.ValueKind != JsonValueKind.Null ? at.GetString() : null);
    }

    [Fact]
    public async Task Replay_RetriesExhausted_GetsAFreshRetryBudget()
    {
        // Two attempts allowed: the first life ends in retries_exhausted; the replay fails once more and is retried,
        // not dead-lettered again at its first transient failure.
        await using var relay = await Relay.StartAsync(c => c["Dispatcher:Retry:MaxAttempts"] = "2");
        await relay.EmulatorApi.ScriptAsync(new
        {
            responses = new[] { new { status = 503, retryAfter = "0" }, new { status = 503, retryAfter = "0" }, new { status = 503, retryAfter = "0" } },
        });
        var deliveryId = await SendAsync(relay);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.DeadLettered);
        Assert.Equal("retries_exhausted", (await DeliveryAsync(relay, deliveryId)).GetProperty("reason").GetString());

        using var replay = relay.Operator(HttpMethod.Post, $"/api/deadletters/{deliveryId}/replay");
        using var answer = await relay.Ingress.Client.SendAsync(replay);
        Assert.Equal(HttpStatusCode.Accepted, answer.StatusCode);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);

        Assert.Equal(4, (await relay.EmulatorApi.RequestsAsync()).Count);
        Assert.Equal(2, (await DeliveryAsync(relay, deliveryId)).GetProperty("attempts").GetInt32());
    }

    [Fact]
    public async Task ReplayAll_SeveralDeadLetters_AreAllDelivered()
    {
        await using var relay = await Relay.StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = Enumerable.Repeat(new { status = 400 }, 5).ToArray() });
        var ids = await SendDeadLettersAsync(relay, 5);

        using var replay = relay.Operator(HttpMethod.Post, "/api/deadletters/replay?limit=3");
        using var first = await relay.Ingress.Client.SendAsync(replay);
        Assert.Equal(3, (await first.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("replayed").GetInt32());
        using var replayRest = relay.Operator(HttpMethod.Post, "/api/deadletters/replay");
        using var second = await relay.Ingress.Client.SendAsync(replayRest);
        Assert.Equal(2, (await second.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("replayed").GetInt32());

        foreach (var id in ids)
        {
            await WaitForStateAsync(relay, id, DeliveryStates.Delivered);
        }
        Assert.Equal(5, (await relay.EmulatorApi.DeliveredAsync()).Select(r => r.Header("Idempotency-Key")).Distinct().Count());
    }

    [Fact]
    public async Task ReplayAll_OldestDeadLettersNotReplayable_ScansPastThemToTheOthers()
    {
        await using var relay = await Relay.StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = Enumerable.Repeat(new { status = 400 }, 4).ToArray() });
        var ids = await SendDeadLettersAsync(relay, 4);
        // The two oldest lose their bodies (as a deleted record would): they cannot be replayed.
        var oldest = (await relay.Db.SortedSetRangeByRankAsync(RedisKeys.DeadLetters, 0, 1)).Select(v => (string)v!).ToList();
        foreach (var id in oldest)
        {
            await relay.Db.HashDeleteAsync(RedisKeys.Delivery(id), DeliveryRecord.Body);
        }

        using var replay = relay.Operator(HttpMethod.Post, "/api/deadletters/replay?limit=2");
        using var response = await relay.Ingress.Client.SendAsync(replay);

        var result = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal(2, result.GetProperty("replayed").GetInt32());
        Assert.Equal(ids.Except(oldest).Order(), result.GetProperty("deliveryIds").EnumerateArray().Select(e => e.GetString()!).Order());
        Assert.Equal(oldest.Order(), (await relay.Db.SortedSetRangeByRankAsync(RedisKeys.DeadLetters)).Select(v => (string)v!).Order());
    }

    [Theory]
    [InlineData("no body")]
    [InlineData("damaged")]
    public async Task Replay_DeadLetterThatCannotBeReplayed_Is409AndStaysADeadLetter(string damage)
    {
        await using var relay = await Relay.StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 400 } } });
        var id = (await SendDeadLettersAsync(relay, 1)).Single();
        if (damage == "no body")
        {
            await relay.Db.HashDeleteAsync(RedisKeys.Delivery(id), DeliveryRecord.Body);
        }
        else
        {
            await relay.Db.StringSetAsync(RedisKeys.Delivery(id), "not a hash");
        }

        using var replay = relay.Operator(HttpMethod.Post, $"/api/deadletters/{id}/replay");
        using var response = await relay.Ingress.Client.SendAsync(replay);

        Assert.Equal(HttpStatusCode.Conflict, response.StatusCode);
        Assert.Equal("deadletter_not_replayable", await ProblemResponses.ReasonAsync(response));
        Assert.NotNull(await relay.Db.SortedSetScoreAsync(RedisKeys.DeadLetters, id));
        Assert.Single(await relay.EmulatorApi.RequestsAsync());
    }

    [Fact]
    public async Task ReplayAll_RunsThatFailAgainAtOnce_AreReplayedOnceEachByOneCall()
    {
        await using var relay = await Relay.StartAsync();
        // Every POST is answered 404: a replayed run is a dead letter again within milliseconds, with a newer score.
        await relay.EmulatorApi.ScriptAsync(new { responses = Enumerable.Repeat(new { status = 404 }, 200).ToArray() });
        var ids = await SendDeadLettersAsync(relay, 20);

        using var replay = relay.Operator(HttpMethod.Post, "/api/deadletters/replay?limit=500");
        using var response = await relay.Ingress.Client.SendAsync(replay);

        var result = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal(ids.Order(), result.GetProperty("deliveryIds").EnumerateArray().Select(e => e.GetString()!).Order());
        Assert.Equal(20, result.GetProperty("replayed").GetInt32());
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count >= 40 &&
            await relay.Db.SortedSetLengthAsync(RedisKeys.DeadLetters) == 20, TimeSpan.FromSeconds(20), "every replay is a dead letter again");
        await Task.Delay(500);
        Assert.Equal(40, (await relay.EmulatorApi.RequestsAsync()).Count);
    }

    [Fact]
    public async Task List_PagesAfterTheFirstIsReplayed_TheNextPageStartsAfterItsLastItemNotAfterAPosition()
    {
        await using var relay = await Relay.StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = Enumerable.Repeat(new { status = 400 }, 5).ToArray() });
        await SendDeadLettersAsync(relay, 5);
        var ordered = (await relay.Db.SortedSetRangeByRankAsync(RedisKeys.DeadLetters)).Select(v => (string)v!).ToList();

        var first = await ListAsync(relay, "?limit=2");
        Assert.Equal(ordered[..2], Ids(first));
        // The operator replays the first page (answered 202 below, delivered: the script's 400s are used up)...
        foreach (var id in Ids(first))
        {
            using var replay = relay.Operator(HttpMethod.Post, $"/api/deadletters/{id}/replay");
            using var replayed = await relay.Ingress.Client.SendAsync(replay);
            Assert.Equal(HttpStatusCode.Accepted, replayed.StatusCode);
        }
        // ...and the next page still starts with the third dead letter (a position would skip two).
        var second = await ListAsync(relay, $"?limit=2&cursor={Uri.EscapeDataString(first.GetProperty("nextCursor").GetString()!)}");
        Assert.Equal(ordered[2..4], Ids(second));
        var third = await ListAsync(relay, $"?limit=2&cursor={Uri.EscapeDataString(second.GetProperty("nextCursor").GetString()!)}");
        Assert.Equal(ordered[4..], Ids(third));
        Assert.Equal(JsonValueKind.Null, third.GetProperty("nextCursor").ValueKind);
    }

    [Theory]
    [InlineData("12")]
    [InlineData("abc")]
    [InlineData("12_")]
    [InlineData("_d_0123456789abcdef0123456789abcdef")]
    [InlineData("-12_d_0123456789abcdef0123456789abcdef")]
    public async Task List_CursorNotFromAPage_Is400CursorInvalid(string cursor)
    {
        await using var relay = await Relay.StartAsync();

        using var request = relay.Operator(HttpMethod.Get, $"/api/deadletters?cursor={Uri.EscapeDataString(cursor)}");
        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal("cursor_invalid", await ProblemResponses.ReasonAsync(response));
    }

    /// <summary>Sends runs one at a time, each dead-lettered before the next (so their dead-letter times are in order).</summary>
    private static async Task<List<string>> SendDeadLettersAsync(Relay relay, int count)
    {
        var ids = new List<string>();
        for (var i = 0; i < count; i++)
        {
            ids.Add(await SendAsync(relay));
            await WaitForStateAsync(relay, ids[^1], DeliveryStates.DeadLettered);
        }
        return ids;
    }

    private static async Task<JsonElement> ListAsync(Relay relay, string query)
    {
        using var request = relay.Operator(HttpMethod.Get, "/api/deadletters" + query);
        using var response = await relay.Ingress.Client.SendAsync(request);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return await response.Content.ReadFromJsonAsync<JsonElement>();
    }

    private static List<string> Ids(JsonElement page) =>
        page.GetProperty("items").EnumerateArray().Select(i => i.GetProperty("deliveryId").GetString()!).ToList();

    [Theory]
    [InlineData("/api/deadletters/replay?limit=0", "POST")]
    [InlineData("/api/deadletters/replay?limit=-5", "POST")]
    [InlineData("/api/deadletters/replay?limit=501", "POST")]
    [InlineData("/api/deadletters?limit=0", "GET")]
    [InlineData("/api/deadletters?limit=501", "GET")]
    [InlineData("/api/deadletters/replay?limit=abc", "POST")]
    [InlineData("/api/deadletters/replay?limit=99999999999", "POST")]
    [InlineData("/api/deadletters?limit=1.5", "GET")]
    public async Task DeadLetterCalls_LimitOutOfRange_Are400AndReplayNothing(string path, string method)
    {
        await using var relay = await Relay.StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 400 } } });
        var deliveryId = await SendAsync(relay);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.DeadLettered);

        using var request = relay.Operator(new HttpMethod(method), path);
        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        Assert.Equal("limit_invalid", await ProblemResponses.ReasonAsync(response));
        Assert.Equal(DeliveryStates.DeadLettered, (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State));
        Assert.Single(await relay.EmulatorApi.RequestsAsync());
    }

    [Fact]
    public async Task Delete_DeadLetter_RemovesItAndItsBody()
    {
        await using var relay = await Relay.StartAsync();
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 400 } } });
        var deliveryId = await SendAsync(relay);
        await WaitForStateAsync(relay, deliveryId, DeliveryStates.DeadLettered);

        using var delete = relay.Operator(HttpMethod.Delete, $"/api/deadletters/{deliveryId}");
        using var answer = await relay.Ingress.Client.SendAsync(delete);

        Assert.Equal(HttpStatusCode.NoContent, answer.StatusCode);
        Assert.Equal(0, await relay.Db.SortedSetLengthAsync(RedisKeys.DeadLetters));
        Assert.False(await relay.Db.HashExistsAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.Body));
        Assert.Equal(DeliveryStates.Discarded, (await DeliveryAsync(relay, deliveryId)).GetProperty("state").GetString());
        Assert.NotNull(await relay.Db.KeyTimeToLiveAsync(RedisKeys.Delivery(deliveryId)));
    }

    [Fact]
    public async Task Delete_WhileOtherRunsAreDeadLettered_DiscardsEveryOne()
    {
        // Other Dispatchers write the dead-letter index all the time while a target fails in bulk. A discard that
        // watched the whole index answered 404 for a real dead letter whenever such a write came in between.
        await using var relay = await Relay.StartAsync();
        var ids = Enumerable.Range(0, 10).Select(_ => "d_" + Guid.NewGuid().ToString("N")).ToList();
        foreach (var id in ids)
        {
            await relay.Db.HashSetAsync(RedisKeys.Delivery(id),
                [new(DeliveryRecord.State, DeliveryStates.DeadLettered), new(DeliveryRecord.Body, "{}"), new(DeliveryRecord.Org, TestRuns.Org)]);
            await relay.Db.SortedSetAddAsync(RedisKeys.DeadLetters, id, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        }
        using var stop = new CancellationTokenSource();
        var writers = Enumerable.Range(0, 4).Select(w => Task.Run(async () =>
        {
            for (var n = 0; !stop.IsCancellationRequested; n++)
            {
                await relay.Db.SortedSetAddAsync(RedisKeys.DeadLetters, $"d_other{w}_{n}", 0);
            }
        })).ToArray();
        var answers = new List<HttpStatusCode>();
        try
        {
            foreach (var id in ids)
            {
                using var delete = relay.Operator(HttpMethod.Delete, $"/api/deadletters/{id}");
                using var answer = await relay.Ingress.Client.SendAsync(delete);
                answers.Add(answer.StatusCode);
            }
        }
        finally
        {
            await stop.CancelAsync();
            await Task.WhenAll(writers);
        }

        Assert.All(answers, a => Assert.Equal(HttpStatusCode.NoContent, a));
        foreach (var id in ids)
        {
            Assert.Equal(DeliveryStates.Discarded, (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(id), DeliveryRecord.State));
            Assert.Null(await relay.Db.SortedSetScoreAsync(RedisKeys.DeadLetters, id));
        }
    }
}
