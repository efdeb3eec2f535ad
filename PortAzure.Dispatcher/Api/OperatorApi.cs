using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Options;
using PortAzure.Diagnostics;
using PortAzure.Dispatcher.Delivery;
using PortAzure.Dispatcher.Diagnostics;
using PortAzure.Redis;
using PortAzure.Security;
using StackExchange.Redis;

namespace PortAzure.Dispatcher.Api;

/// <summary>Find a delivery, see why it failed, replay it. Reached through the Ingress's YARP routes.</summary>
internal static partial class OperatorApi
{
    // The last millisecond DateTimeOffset can hold (year 9999): a damaged time past it is shown as none, not thrown.
    private const long MaxUnixMilliseconds = 253_402_300_799_999;

    // Not a state the relay writes: what a record that cannot be read shows.
    private const string DamagedState = "damaged";
    private const int MaxCursorIdLength = 256;

    // A page of dead letters shows each one's newest attempts, GET /api/deliveries/{id} all: a log keeps up to 200 after
    // replays, and a page of 500 read whole could be tens of MB built in memory.
    private const int ListedAttempts = 10;
    private const int MaxReplayBatch = 500;
    private const int MaxPageSize = 500;

    // The Ingress's upper bound for Ingress:MaxRunIdLength: no longer one can have been accepted.
    private const int MaxRunIdLength = 1024;

    public static WebApplication MapOperatorApi(this WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.UseExceptionHandler();
        app.UseStatusCodePages();

        var api = app.MapGroup("/api").AddEndpointFilter(RequireApiKey);
        api.MapGet("/deliveries/{id}", GetDeliveryAsync).WithName("GetDelivery");
        api.MapGet("/deliveries", FindByRunAsync).WithName("FindDeliveriesByRun").AddEndpointFilter(RefuseRepeatedParameters);
        api.MapGet("/deadletters", ListDeadLettersAsync).WithName("ListDeadLetters").AddEndpointFilter(RefuseRepeatedParameters);
        api.MapPost("/deadletters/{id}/replay", ReplayOneAsync).WithName("ReplayDeadLetter");
        api.MapPost("/deadletters/replay", ReplayAllAsync).WithName("ReplayDeadLetters").AddEndpointFilter(RefuseRepeatedParameters);
        api.MapDelete("/deadletters/{id}", DeleteDeadLetterAsync).WithName("DeleteDeadLetter");
        api.MapGet("/stats", StatsAsync).WithName("Stats");
        app.MapOpenApi().AddEndpointFilter(RequireApiKey);
        return app;
    }

    private static async ValueTask<object?> RequireApiKey(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        var http = context.HttpContext;
        var key = http.RequestServices.GetRequiredService<IOptionsMonitor<AdminOptions>>().CurrentValue.ApiKey;
        var result = AdminApiKey.Check(http.Request, key);
        return result == AdminApiKey.Result.Valid ? await next(context) : AdminApiKey.Reject(result);
    }

    // Each parameter the calls read, with the reason its refusals give.
    private static readonly (string Name, string Reason)[] QueryParameters = [("runId", "run_id_invalid"), ("limit", "limit_invalid"), ("cursor", "cursor_invalid")];

    /// <summary>
    /// On the calls that read them, a parameter given twice is refused: bound as one string, the values were joined with a comma. "?runId=a&amp;runId=b"
    /// was looked up as the run id "a,b" (a legal one), and a repeated cursor read as one that names no dead letter, so a
    /// client that repeated it was given the first page again and again.
    /// </summary>
    private static async ValueTask<object?> RefuseRepeatedParameters(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        var query = context.HttpContext.Request.Query;
        foreach (var (name, reason) in QueryParameters)
        {
            if (query[name].Count > 1)
            {
                return Problems.Create(StatusCodes.Status400BadRequest, reason, $"Give ?{name}= once: it appears more than once.");
            }
        }
        return await next(context);
    }

    private static async Task<IResult> GetDeliveryAsync(string id, IConnectionMultiplexer redis)
    {
        if (!IsDeliveryId(id))
        {
            return InvalidId();
        }
        var view = await LoadAsync(redis.GetDatabase(), id, attempts: int.MaxValue);
        return view is null
            ? Problems.Create(StatusCodes.Status404NotFound, "delivery_not_found", $"No delivery '{id}' is known (it may have expired).")
            : TypedResults.Ok(view);
    }

    private static async Task<IResult> FindByRunAsync(string? runId, IConnectionMultiplexer redis)
    {
        if (string.IsNullOrEmpty(runId))
        {
            return Problems.Create(StatusCodes.Status400BadRequest, "run_id_required", "Give the Port run id as ?runId=.");
        }
        if (runId.Length > MaxRunIdLength)
        {
            return Problems.Create(StatusCodes.Status400BadRequest, "run_id_invalid", $"A run id has at most {MaxRunIdLength} characters.");
        }
        var db = redis.GetDatabase();
        var ids = await db.SetMembersAsync(RedisKeys.RunIndex(runId));
        // Read 16 at a time, as a dead-letter page's are.
        var views = await LoadManyAsync(ids.Select(i => (string)i!).Order(StringComparer.Ordinal), id => LoadAsync(db, id, attempts: 0));
        return TypedResults.Ok(new DeliveryList([.. views.OfType<DeliveryView>()]));
    }

    private static async Task<IResult> ListDeadLettersAsync(IConnectionMultiplexer redis, string? limit, string? cursor)
    {
        if (ParseLimit(limit, MaxPageSize, 50) is not { } take)
        {
            return InvalidLimit(MaxPageSize);
        }
        (long Score, string Id)? after = null;
        if (cursor is not null)
        {
            if (ParseCursor(cursor) is not { } parsed)
            {
                return Problems.Create(StatusCodes.Status400BadRequest, "cursor_invalid", "The cursor must be the nextCursor value of a previous page.");
            }
            after = parsed;
        }
        var db = redis.GetDatabase();
        var page = new List<SortedSetEntry>(take + 1);
        if (after is not { } last)
        {
            page.AddRange(await db.SortedSetRangeByRankWithScoresAsync(RedisKeys.DeadLetters, 0, take));
        }
        else
        {
            // The page after the last item seen, not after a position: replaying or discarding the dead letters of one
            // page moves the others up, and a position would skip as many. Equal scores are ordered by member.
            page.AddRange((await db.SortedSetRangeByScoreWithScoresAsync(RedisKeys.DeadLetters, last.Score, last.Score))
                .Where(e => string.CompareOrdinal(e.Element, last.Id) > 0).Take(take + 1));
            if (page.Count <= take)
            {
                page.AddRange(await db.SortedSetRangeByScoreWithScoresAsync(RedisKeys.DeadLetters, last.Score, double.PositiveInfinity, Exclude.Start,
                    take: take + 1 - page.Count));
            }
        }
        // The records are read 16 at a time (LoadManyAsync), not one after another: each takes two or three round trips,
        // and a page of 500 read in turn waited 1,500 of them (1.5 s at a cloud Redis's 1 ms). The client pipelines them.
        var items = await LoadManyAsync(page.Take(take), async entry =>
            // One without a record (deleted by hand, or a member that is no delivery id) is shown too: left out, it was
            // counted in total and in the backlog alert, and the operator could not learn its id to DELETE it.
            await LoadAsync(db, entry.Element!, attempts: ListedAttempts)
                ?? Damaged(entry.Element!, $"The dead letter has no record in Redis: nothing can be replayed. DELETE /api/deadletters/{entry.Element} removes it."));
        var next = page.Count > take ? FormatCursor(page[take - 1]) : null;
        return TypedResults.Ok(new DeadLetterPage(items, next, await db.SortedSetLengthAsync(RedisKeys.DeadLetters)));
    }

    // A page's cursor names its last dead letter: score (dead-letter time, Unix ms) and id.
    private static string FormatCursor(SortedSetEntry last) =>
        string.Create(CultureInfo.InvariantCulture, $"{(long)last.Score}_{last.Element}");

    private static (long Score, string Id)? ParseCursor(string cursor)
    {
        var split = cursor.IndexOf('_', StringComparison.Ordinal);
        return split > 0
            && long.TryParse(cursor.AsSpan(0, split), NumberStyles.None, CultureInfo.InvariantCulture, out var score)
            // Any member, not only a delivery id: a damaged one in the index would otherwise end the paging at it.
            && cursor[(split + 1)..] is { Length: > 0 and <= MaxCursorIdLength } id
            ? (score, id)
            : null;
    }

    private static async Task<IResult> ReplayOneAsync(string id, IConnectionMultiplexer redis, DeliveryStore store, TimeProvider timeProvider, ILoggerFactory loggers)
    {
        if (!IsDeliveryId(id))
        {
            return InvalidId();
        }
        TagDelivery(id);
        switch (await store.ReplayAsync(id, timeProvider.GetUtcNow()))
        {
            case ReplayOutcome.NotADeadLetter:
                return await NotADeadLetterAsync(redis.GetDatabase(), id);
            case ReplayOutcome.NotReplayable:
                return Problems.Create(StatusCodes.Status409Conflict, "deadletter_not_replayable", $"'{id}' has no body or target left to replay (or its record is damaged); it stays a dead letter.");
            default:
                break;
        }
        Log.Replayed(loggers.CreateLogger(typeof(OperatorApi)), 1);
        await LinkToRunsAsync(redis.GetDatabase(), [id]);
        return TypedResults.Accepted($"/api/deliveries/{id}", new ReplayResult(1, [id]));
    }

    private static async Task<IResult> ReplayAllAsync(IConnectionMultiplexer redis, DeliveryStore store, TimeProvider timeProvider, ILoggerFactory loggers, string? limit)
    {
        // Out of range is refused, not clamped: a replay starts pipeline runs, and "changes nothing" is the promise for bad input.
        if (ParseLimit(limit, MaxReplayBatch, 100) is not { } take)
        {
            return InvalidLimit(MaxReplayBatch);
        }
        var logger = loggers.CreateLogger(typeof(OperatorApi));
        var db = redis.GetDatabase();
        var replayed = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        // Only what was a dead letter when the call began: a replayed run can fail again within milliseconds (a 4xx)
        // and come back with a newer score, and must not be replayed twice by one call.
        var before = timeProvider.GetUtcNow().ToUnixTimeMilliseconds();
        // Dead letters that cannot be replayed (no body left) stay at the head of the set: the scan goes past them,
        // or once `take` of them were the oldest, every call would replay nothing.
        var passed = 0L;
        while (replayed.Count < take)
        {
            RedisValue[] ids;
            try
            {
                ids = await db.SortedSetRangeByScoreAsync(RedisKeys.DeadLetters, double.NegativeInfinity, before, Exclude.Stop,
                    skip: passed, take: take - replayed.Count);
            }
            catch (Exception ex) when (RedisFailures.IsFailure(ex) && replayed.Count > 0)
            {
                // As below, between two pages: every replay so far is known, none is in doubt.
                Log.ReplayStopped(logger, ex, replayed.Count, "none");
                return TypedResults.Ok(new ReplayResult(replayed.Count, replayed, Incomplete: true));
            }
            if (ids.Length == 0)
            {
                break;
            }
            foreach (var value in ids)
            {
                var id = (string)value!;
                if (!seen.Add(id))
                {
                    // Replayed by this call and a dead letter again (a clock between replicas behind this one's).
                    passed++;
                    continue;
                }
                ReplayOutcome outcome;
                try
                {
                    outcome = await store.ReplayAsync(id, timeProvider.GetUtcNow());
                }
                catch (Exception ex) when (RedisFailures.IsFailure(ex) && !(replayed.Count == 0 && RedisFailures.IsWrongType(ex)))
                {
                    // (A key of another type before any replay: nothing to hide, and no outage to wait out. The damaged-key
                    // answer says so, where "in doubt" sent the operator to check a replay that a damaged stream never ran.)
                    // Some may have been replayed already: a 503 would hide which, and its retry would replay up to `limit`
                    // more. This one's outcome is unknown (a timeout may have run it), even when it is the first: a 503
                    // would say none was. GET /api/deliveries/{id} tells.
                    Log.ReplayStopped(logger, ex, replayed.Count, id);
                    return TypedResults.Ok(new ReplayResult(replayed.Count, replayed, Incomplete: true, StoppedAt: id));
                }
                switch (outcome)
                {
                    case ReplayOutcome.Replayed:
                        replayed.Add(id);
                        break;
                    case ReplayOutcome.NotReplayable:
                        passed++;
                        break;
                    default:
                        // Replayed or discarded by another call meanwhile: it left the set, and the ranks moved up.
                        break;
                }
            }
        }
        Log.Replayed(logger, replayed.Count);
        await LinkToRunsAsync(db, replayed);
        return TypedResults.Ok(new ReplayResult(replayed.Count, replayed));
    }

    /// <summary>The page size or batch size: <paramref name="fallback"/> when absent, null when not a whole number in 1 to <paramref name="max"/>.</summary>
    private static int? ParseLimit(string? limit, int max, int fallback) =>
        limit is null ? fallback
        : int.TryParse(limit, NumberStyles.None, CultureInfo.InvariantCulture, out var value) && value >= 1 && value <= max ? value
        : null;

    private static IResult InvalidLimit(int max) =>
        Problems.Create(StatusCodes.Status400BadRequest, "limit_invalid", $"limit must be a whole number between 1 and {max}.");

    private static async Task<IResult> DeleteDeadLetterAsync(string id, IConnectionMultiplexer redis, DeliveryStore store, TimeProvider timeProvider, IOptionsMonitor<DispatcherOptions> options)
    {
        // A member of the dead letters that is no delivery id (damage) is listed, so it can be removed too.
        if (!IsDeliveryId(id) && (id.Length > MaxCursorIdLength || await redis.GetDatabase().SortedSetScoreAsync(RedisKeys.DeadLetters, id) is null))
        {
            return InvalidId();
        }
        TagDelivery(id);
        if (!await store.DiscardAsync(id, timeProvider.GetUtcNow(), TimeSpan.FromHours(options.CurrentValue.DeliveredRetentionHours)))
        {
            return await NotADeadLetterAsync(redis.GetDatabase(), id);
        }
        await LinkToRunsAsync(redis.GetDatabase(), [id]);
        return TypedResults.NoContent();
    }

    /// <summary>
    /// The operator's request is a trace of its own (the replayed run's attempts join the run's trace): filtering on the
    /// delivery id finds it beside them.
    /// </summary>
    private static void TagDelivery(string id) => Activity.Current?.SetTag(PortAzureDiagnostics.Tags.DeliveryId, id);

    /// <summary>
    /// Links the operator's request to the traces of the runs it replayed or discarded, so that the dashboard leads from one
    /// to the other. Read only for a recorded request, after the change, in one round trip; a record without a trace context
    /// (or damaged, or unreadable now) gets no link: the change is done, and a link is not worth failing its answer. Not
    /// after a batch replay that Redis stopped: the reads would wait out the same failure before the operator's answer.
    /// (The exporter keeps the first 128 links of a span unless OTEL_SPAN_LINK_COUNT_LIMIT says otherwise.)
    /// </summary>
    private static async Task LinkToRunsAsync(IDatabase db, List<string> ids)
    {
        if (Activity.Current is not { IsAllDataRequested: true } request || ids.Count == 0)
        {
            return;
        }
        var reads = ids.Select(id => db.HashGetAsync(RedisKeys.Delivery(id), [DeliveryRecord.TraceParent, DeliveryRecord.TraceState])).ToList();
        foreach (var read in reads)
        {
            RedisValue[] context;
            try
            {
                context = await read;
            }
            catch (Exception ex) when (RedisFailures.IsFailure(ex))
            {
                continue;
            }
            if (ActivityContext.TryParse(context[0], context[1], isRemote: true, out var run))
            {
                request.AddLink(new ActivityLink(run));
            }
        }
    }

    // Not in the dead-letter index: unknown (404), or a delivery in another state (409). The latter is also what a client
    // sees when it retries a replay or discard whose answer it never got: the state tells it what happened.
    private static async Task<IResult> NotADeadLetterAsync(IDatabase db, string id)
    {
        var state = await db.HashGetAsync(RedisKeys.Delivery(id), DeliveryRecord.State);
        return state.IsNullOrEmpty
            ? Problems.Create(StatusCodes.Status404NotFound, "deadletter_not_found", $"No dead letter '{id}' is known (it may have expired).")
            : Problems.Create(StatusCodes.Status409Conflict, "not_a_deadletter", $"'{id}' is not a dead letter: its state is '{state}'.");
    }

    private static async Task<IResult> StatsAsync(BacklogMonitor monitor)
    {
        var snapshot = await monitor.ReadAsync();
        return TypedResults.Ok(new StatsView(snapshot.StreamLength, snapshot.Pending, snapshot.ScheduledRetries, snapshot.DeadLetters,
            snapshot.PausedTargets, snapshot.OldestAge.TotalSeconds, snapshot.PortReports, snapshot.DamagedKeys));
    }

    /// <summary>
    /// Loads at most <see cref="LoadsAtOnce"/> records at a time, in order: each record read whole holds its body (a dead
    /// letter's, up to Ingress:MaxBodyBytes), and a page of 500 read at once could hold hundreds of MB here and in Redis's
    /// output buffer, on the connection deliveries use.
    /// </summary>
    private static async Task<T[]> LoadManyAsync<TSource, T>(IEnumerable<TSource> sources, Func<TSource, Task<T>> load)
    {
        using var gate = new SemaphoreSlim(LoadsAtOnce);
        return await Task.WhenAll(sources.Select(async source =>
        {
            await gate.WaitAsync();
            try
            {
                return await load(source);
            }
            finally
            {
                gate.Release();
            }
        }));
    }

    private const int LoadsAtOnce = 16;

    // Damaged data (a key of another type, an attempt that is not JSON) is shown as such, not thrown: one such record in
    // the dead-letter index would otherwise fail every page that holds it, and the operator could not find it to DELETE.
    /// <param name="attempts">How many of the newest attempts to load; 0: none (the view has no attempt list).</param>
    private static async Task<DeliveryView?> LoadAsync(IDatabase db, string id, int attempts)
    {
        Dictionary<string, RedisValue> hash;
        try
        {
            hash = (await db.HashGetAllAsync(RedisKeys.Delivery(id))).ToDictionary(e => (string)e.Name!, e => e.Value);
        }
        catch (RedisServerException ex) when (RedisFailures.IsWrongType(ex))
        {
            return Damaged(id, $"The delivery's record in Redis is not a hash. If it is a dead letter, DELETE /api/deadletters/{id} removes it.");
        }
        if (hash.Count == 0)
        {
            return null;
        }
        IReadOnlyList<AttemptRecord>? attemptLog = null;
        if (attempts > 0)
        {
            attemptLog = await LoadAttemptsAsync(db, id, attempts);
        }
        string? Text(string name) => hash.TryGetValue(name, out var v) && !v.IsNullOrEmpty ? (string?)v : null;
        DateTimeOffset? Time(string name) => hash.TryGetValue(name, out var v) ? UnixTime(v) : null;
        int? Number(string name) => hash.TryGetValue(name, out var v) && int.TryParse((string?)v, out var n) ? n : null;
        var traceParent = Text(DeliveryRecord.TraceParent);
        var state = Text(DeliveryRecord.State) ?? "unknown";
        return new DeliveryView(
            id,
            state,
            Text(DeliveryRecord.Org),
            Text(DeliveryRecord.Webhook),
            Text(DeliveryRecord.RunId),
            Time(DeliveryRecord.ReceivedAt),
            Time(DeliveryRecord.UpdatedAt),
            Time(DeliveryRecord.DeliveredAt),
            Number(DeliveryRecord.Attempts) ?? 0,
            Number(DeliveryRecord.LastStatus) is > 0 and var status ? status : null,
            Text(DeliveryRecord.LastError),
            // Only a retry waits for one; records finished before the finish removed the field still hold the last one.
            state == DeliveryStates.Retrying ? Time(DeliveryRecord.NextAttemptAt) : null,
            Text(DeliveryRecord.Reason),
            Text(DeliveryRecord.Hint),
            traceParent is { Length: 55 } ? traceParent.Substring(3, 32) : null,
            Number(DeliveryRecord.Replays) ?? 0,
            await PortReportAsync(db, id, Text(DeliveryRecord.PortReportEntry), Text(DeliveryRecord.PortReport), Time(DeliveryRecord.PortReportAt)),
            attemptLog);
    }

    /// <summary>
    /// Pending while the report the record names is in the report stream. A report the record still names once it is gone
    /// was never ended by a reporter: trimmed away before it was sent (the stream keeps about the newest
    /// <see cref="RedisKeys.PortReportsMaxLength"/>), or reaped with the trimmed entries by a takeover. Nothing ends it on the
    /// record then, so it is read as such here.
    /// </summary>
    private static async Task<PortReportView?> PortReportAsync(IDatabase db, string id, string? entry, string? ended, DateTimeOffset? at)
    {
        // The reporter's removal ends the report on the record in the script that deletes its entry, as a hand-back moves the
        // record to the new entry: read again after finding the entry gone, a record that still names it will not be
        // changed for it. One that names another by then (a hand-back, a newer report) is looked up once more.
        for (var round = 0; ; round++)
        {
            if (entry is null)
            {
                return ended is null ? null : new PortReportView(ended, at);
            }
            if (round == 2 || await StillQueuedAsync(db, entry))
            {
                return new PortReportView(PortReportView.Pending, at);
            }
            var again = await db.HashGetAsync(RedisKeys.Delivery(id), [DeliveryRecord.PortReportEntry, DeliveryRecord.PortReport, DeliveryRecord.PortReportAt]);
            if (again[0] == entry)
            {
                // An outcome beside it: ended by a reporter of an earlier version, which did not clear the entry.
                return new PortReportView(again[1].IsNullOrEmpty ? PortReportView.Trimmed : (string)again[1]!, UnixTime(again[2]));
            }
            (entry, ended, at) = (again[0].IsNullOrEmpty ? null : (string?)again[0], again[1].IsNullOrEmpty ? null : (string?)again[1], UnixTime(again[2]));
        }
    }

    private static DateTimeOffset? UnixTime(RedisValue value) =>
        long.TryParse((string?)value, out var ms) && ms is > 0 and <= MaxUnixMilliseconds ? DateTimeOffset.FromUnixTimeMilliseconds(ms) : null;

    private static async Task<bool> StillQueuedAsync(IDatabase db, string entry)
    {
        // Damage (no entry has such an id) is not sent to Redis, which would answer an error.
        var dash = entry.IndexOf('-', StringComparison.Ordinal);
        if (dash < 0 || !IsUInt64(entry.AsSpan(0, dash)) || !IsUInt64(entry.AsSpan(dash + 1)))
        {
            return false;
        }
        try
        {
            return (await db.StreamRangeAsync(RedisKeys.PortReports, entry, entry, count: 1)).Length > 0;
        }
        catch (RedisServerException ex) when (RedisFailures.IsWrongType(ex))
        {
            // A damaged report stream: whether the report is still in it cannot be told, and pending is what the record says.
            return true;
        }

        static bool IsUInt64(ReadOnlySpan<char> text) => ulong.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out _);
    }

    /// <summary>The attempts that can be read; an entry that is not an attempt, or a key that is not a list, is left out.</summary>
    private static async Task<IReadOnlyList<AttemptRecord>> LoadAttemptsAsync(IDatabase db, string id, int newest)
    {
        RedisValue[] raw;
        try
        {
            // A start before the list's first item reads from its first: int.MaxValue reads them all.
            raw = await db.ListRangeAsync(RedisKeys.Attempts(id), -newest, -1);
        }
        catch (RedisServerException ex) when (RedisFailures.IsWrongType(ex))
        {
            return [];
        }
        var attempts = new List<AttemptRecord>(raw.Length);
        foreach (var item in raw)
        {
            try
            {
                if (JsonSerializer.Deserialize<AttemptRecord>((string)item!, AttemptRecord.JsonOptions) is { } attempt)
                {
                    attempts.Add(attempt);
                }
            }
            catch (JsonException)
            {
                // Left out: the record and the other attempts still tell the operator what happened.
            }
        }
        return attempts;
    }

    private static DeliveryView Damaged(string id, string hint) =>
        new(id, DamagedState, null, null, null, null, null, null, 0, null, null, null, null, hint, null, 0, null, null);

    private static bool IsDeliveryId(string id) => DeliveryIdPattern().IsMatch(id);

    private static IResult InvalidId() =>
        Problems.Create(StatusCodes.Status400BadRequest, "delivery_id_invalid", "A delivery id looks like 'd_' followed by 32 hex digits.");

    // \z, not $: $ also matches before a final newline.
    [GeneratedRegex(@"^d_[0-9a-f]{32}\z", RegexOptions.CultureInvariant)]
    private static partial Regex DeliveryIdPattern();

    private static partial class Log
    {
        [LoggerMessage(EventIds.Replayed, LogLevel.Information, "Operator replayed {Count} dead letters")]
        public static partial void Replayed(ILogger logger, int count);

        [LoggerMessage(EventIds.ReplayStopped, LogLevel.Warning, "Operator replay stopped by a Redis error after {Count} dead letters; in doubt: {DeliveryId}")]
        public static partial void ReplayStopped(ILogger logger, Exception exception, int count, string deliveryId);
    }
}

internal sealed record DeliveryView(
    string DeliveryId,
    string State,
    string? Org,
    string? Webhook,
    string? RunId,
    DateTimeOffset? ReceivedAt,
    DateTimeOffset? UpdatedAt,
    DateTimeOffset? DeliveredAt,
    int Attempts,
    int? LastStatus,
    string? LastError,
    DateTimeOffset? NextAttemptAt,
    string? Reason,
    string? Hint,
    string? TraceId,
    int Replays,
    PortReportView? PortReport,
    IReadOnlyList<AttemptRecord>? AttemptHistory);

/// <summary>Where the delivery's report to Port stands; null on the view when none was written (reporting off, no run id).</summary>
/// <param name="State">For the newest report written: <see cref="Pending"/> while it is in the report stream, not yet
/// ended; else how it ended, as the <c>portazure.port.reports</c> outcome: <c>sent</c>, <c>already_ended</c>, <c>failed</c>,
/// <see cref="Trimmed"/> (it left the stream unsent).</param>
/// <param name="At">When that last changed: the report written, or ended. For a report found gone from the stream without
/// being ended (trimmed before any reporter ended it), when it was written.</param>
internal sealed record PortReportView(string State, DateTimeOffset? At)
{
    public const string Pending = "pending";
    public const string Trimmed = "trimmed";
}

internal sealed record DeliveryList(IReadOnlyList<DeliveryView> Items);

internal sealed record DeadLetterPage(IReadOnlyList<DeliveryView> Items, string? NextCursor, long Total);

/// <param name="Incomplete">A Redis error stopped a batch replay after <paramref name="Replayed"/> dead letters.</param>
/// <param name="StoppedAt">The dead letter whose replay failed; whether it ran is unknown (see its delivery).</param>
internal sealed record ReplayResult(int Replayed, IReadOnlyList<string> DeliveryIds, bool Incomplete = false, string? StoppedAt = null);

/// <param name="DamagedKeys">Keys holding another type (damaged): their counts read 0.</param>
internal sealed record StatsView(long StreamLength, long Pending, long ScheduledRetries, long DeadLetters, long PausedTargets, double OldestAgeSeconds,
    long PortReports, IReadOnlyList<string> DamagedKeys);
